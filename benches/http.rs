//! Micro-benchmarks of `ringsock serve`'s per-request CPU work, without sockets: what a
//! worker spends on each request before and after the syscalls.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringsock::http::answer::{Answer, Body, ContentRange, FileBody};
use ringsock::http::files::Root;
use ringsock::http::files::{self, FileInfo};
use ringsock::http::response::{self, Connection};
use ringsock::http::{api, request, route, Routes};

/// What apt 2.6 sends for an index file it already has (If-Modified-Since revalidation).
const APT_HEAD: &[u8] = b"GET /debian/dists/bookworm/main/binary-amd64/Packages.xz HTTP/1.1\r\n\
Host: deb.example.org\r\n\
Cache-Control: max-age=0\r\n\
If-Modified-Since: Sat, 10 Feb 2024 09:59:29 GMT\r\n\
User-Agent: Debian APT-HTTP/1.3 (2.6.1)\r\n\r\n";

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Bytes(APT_HEAD.len() as u64));
    // What the serve loop calls on the bytes it read: httparse tokenising plus our
    // header dispatch and framing checks for one apt head. (An HTTP/1.1 head is never
    // rewritten, so the same buffer serves every iteration.)
    let mut buf = APT_HEAD.to_vec();
    group.bench_function("apt_request_head", |b| {
        b.iter(|| {
            let req = request::parse_head(black_box(&mut buf));
            black_box(req.map(|r| r.map(|r| r.head_len)))
        })
    });
    group.finish();
}

fn routing(c: &mut Criterion) {
    let routes = Routes {
        root: Some(std::sync::Arc::new(
            Root::new(&std::env::temp_dir(), false, false).expect("a root"),
        )),
        api_version: true,
        metrics_everywhere: false,
        metrics: std::sync::Arc::new(|_, _| {}),
        upstreams: std::sync::Arc::new(ringsock::http::upstream::Upstreams::none()),
    };
    // Picking the handler for a path: API endpoints first, then the file tree.
    c.bench_function("route/api_and_file", |b| {
        b.iter(|| {
            (
                route(black_box(b"/api/version"), &routes),
                route(
                    black_box(b"/debian/pool/main/h/hello/hello_2.10-3_amd64.deb"),
                    &routes,
                ),
            )
        })
    });
}

fn heads(c: &mut Criterion) {
    let date = response::format_http_date(1_700_000_000);
    let mut out = Vec::with_capacity(512);
    // The whole /api/version answer (head and body) into a reused buffer, as the hot
    // path makes and writes it.
    c.bench_function("head/api_version", |b| {
        b.iter(|| {
            out.clear();
            let answer = Answer::ok(api::VERSION_TYPE, Body::Static(api::VERSION_BODY));
            answer.write(&mut out, &date, Connection::KeepAlive, false);
            black_box(out.len())
        })
    });
    // A 206 file head with validators, Content-Range and Content-Type (its body is sent
    // with sendfile, not measured).
    let file = std::sync::Arc::new(std::fs::File::open("/dev/null").expect("/dev/null"));
    // SAFETY: statx is plain data; zeroed is a valid value.
    let stat: libc::statx = unsafe { std::mem::zeroed() };
    let answer = Answer {
        content_type: Some(files::content_type(b"pool/a.deb")),
        validators: Some(FileInfo::new(1_234_567_890, 1_700_000_000, 1_800_000_000)),
        content_range: Some(ContentRange::Bytes {
            first: 1000,
            last: 1_234_567_889,
            len: 1_234_567_890,
        }),
        body: Body::File(FileBody {
            file,
            pages: files::Pages::new(&stat, None),
            offset: 1000,
            len: 1_234_566_890,
        }),
        ..Answer::reason(response::PARTIAL_CONTENT)
    };
    c.bench_function("head/file_range", |b| {
        b.iter(|| {
            out.clear();
            answer.write(&mut out, &date, Connection::KeepAlive, false);
            black_box(out.len())
        })
    });
}

fn resolve(c: &mut Criterion) {
    let mut rel = files::RelPath::default();
    // Percent-decoding and normalising a typical pool path into the NUL-terminated
    // relative path handed to openat2 (the open itself is a syscall, not measured).
    c.bench_function("resolve/pool_path", |b| {
        b.iter(|| {
            let r = rel.decode(black_box(
                b"/debian/pool/main/libx/libxml2/libxml2_2.9.14%2Bdfsg-1.3_amd64.deb",
            ));
            black_box((r.is_ok(), rel.as_bytes().len()))
        })
    });
}

criterion_group!(benches, parse, routing, heads, resolve);
criterion_main!(benches);

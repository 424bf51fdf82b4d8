//! Fuzzes the address and time span syntaxes of the command line: proxy TARGET,
//! `--listen` and systemd time spans. The first byte picks the parser.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Some((which, text)) = bytes.split_first() else {
        return;
    };
    // Arguments reach us as OsStrings; clap hands on valid UTF-8 only.
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    match which % 3 {
        0 => ringsock_fuzz::target(text),
        1 => ringsock_fuzz::listen(text),
        _ => ringsock_fuzz::timespan(text),
    }
});

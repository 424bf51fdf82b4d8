//! Fuzzes the two readers of `--route-auth`: htpasswd files (`Htpasswd::parse`) and
//! `Authorization` values (`header::parse_basic`), raw and as a client encodes them.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    ringsock_fuzz::htpasswd(bytes);
    ringsock_fuzz::authorization(bytes, bytes);
});

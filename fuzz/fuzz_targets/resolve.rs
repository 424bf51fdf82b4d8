//! Fuzzes the URL path to file path mapping (`files::RelPath::decode`): never outside the root.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| ringsock_fuzz::resolve(bytes));

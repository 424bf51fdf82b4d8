//! Fuzzes request heads as the serve loop parses them (`request::parse_head`), plus
//! `files::plan` on every head that parses.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| ringsock_fuzz::head(bytes));

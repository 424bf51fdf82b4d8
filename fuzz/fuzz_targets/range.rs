//! Fuzzes `Range` and the conditional headers: `files::parse_range` and `files::plan`.
//!
//! Input: 24 bytes of length, mtime and now, one flags byte, then the header values
//! separated by newlines (range, if-range, if-match, if-none-match, if-modified-since,
//! if-unmodified-since); a flag bit clear leaves that header out.
#![no_main]

use ringsock_fuzz::Conditionals;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Some((numbers, rest)) = bytes.split_first_chunk::<25>() else {
        return;
    };
    let number = |at: usize| u64::from_le_bytes(numbers[at..at + 8].try_into().unwrap());
    let (len, mtime, now, flags) = (number(0), number(8) as i64, number(16) as i64, numbers[24]);
    // Small lengths reach the edge cases (empty file, last byte) far more often.
    let len = if flags & 0x80 == 0 { len % 4096 } else { len };
    let mut values = rest.split(|&b| b == b'\n');
    let mut next = |bit: u8| {
        let value = values.next().unwrap_or_default();
        (flags & bit != 0).then(|| value.to_vec())
    };
    let headers = Conditionals {
        range: next(1),
        if_range: next(2),
        if_match: next(4),
        if_none_match: next(8),
        if_modified_since: next(16),
        if_unmodified_since: next(32),
        head: flags & 64 != 0,
    };
    if let Some(range) = &headers.range {
        ringsock_fuzz::range(range, len);
    }
    ringsock_fuzz::plan(&headers, len, mtime, now);
});

//! Fuzzes the socket activation environment (`activation::parse_environment`).
//!
//! Input: 4 bytes of our pid, one byte saying which variables are set, then
//! LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES separated by NUL (which no environment
//! value can hold).
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Some((head, rest)) = bytes.split_first_chunk::<5>() else {
        return;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    let our_pid = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let mut values = rest.split('\0');
    let mut next = |bit: u8| {
        let value = values.next().unwrap_or_default();
        (head[4] & bit != 0).then_some(value)
    };
    let (pid, count, names) = (next(1), next(2), next(4));
    ringsock_fuzz::activation_env(pid, count, names, our_pid);
});

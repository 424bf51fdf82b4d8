//! systemd time spans (`30s`, `5min`, `1h 30s`, `500ms`, `infinity`), as `--exit-idle-time`
//! takes them in systemd-socket-proxyd, so the same values work unchanged.

use std::time::Duration;

/// `None` means infinity. An error does not repeat `text`: clap's message about the flag
/// already quotes it.
pub fn parse(text: &str) -> Result<Option<Duration>, String> {
    let text = text.trim();
    if text == "infinity" {
        return Ok(None);
    }
    if text.is_empty() {
        return Err("empty time span; use e.g. 30s, 5min, 1h 30s or infinity".into());
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("bad number {:?}", &rest[..number_len]))?;
        rest = rest[number_len..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let seconds_per_unit = unit_seconds(unit)
            .ok_or_else(|| format!("unknown unit {unit:?} (use us, ms, s, min, h, d, w)"))?;
        total += number * seconds_per_unit;
        rest = rest[unit_len..].trim_start();
    }
    // systemd's limit: a span must fit in 64 bits of microseconds (about 584,000
    // years), which also keeps every deadline computed from it representable.
    if total * 1e6 >= u64::MAX as f64 {
        return Err("out of range; use infinity for no limit".into());
    }
    Ok(Some(Duration::from_secs_f64(total)))
}

fn unit_seconds(unit: &str) -> Option<f64> {
    Some(match unit {
        // A bare number is seconds, as in systemd.
        "" | "s" | "sec" | "second" | "seconds" => 1.0,
        "us" | "usec" | "µs" => 1e-6,
        "ms" | "msec" => 1e-3,
        "m" | "min" | "minute" | "minutes" => 60.0,
        "h" | "hr" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86_400.0,
        "w" | "week" | "weeks" => 604_800.0,
        "M" | "month" | "months" => 2_629_800.0,
        "y" | "year" | "years" => 31_557_600.0,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_systemd_spans() {
        assert_eq!(parse("30s"), Ok(Some(Duration::from_secs(30))));
        assert_eq!(parse("5min"), Ok(Some(Duration::from_secs(300))));
        assert_eq!(parse("1h 30s"), Ok(Some(Duration::from_secs(3630))));
        assert_eq!(parse("1h30s"), Ok(Some(Duration::from_secs(3630))));
        assert_eq!(parse("500ms"), Ok(Some(Duration::from_millis(500))));
        assert_eq!(parse("2"), Ok(Some(Duration::from_secs(2))));
        assert_eq!(parse("1.5s"), Ok(Some(Duration::from_millis(1500))));
        assert_eq!(parse("5 min"), Ok(Some(Duration::from_secs(300))));
        assert_eq!(parse("infinity"), Ok(None));
    }

    #[test]
    fn rejects_garbage_with_a_hint() {
        assert!(parse("").unwrap_err().contains("30s"));
        assert!(parse("5 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse("s").unwrap_err().contains("expected a number"));
        assert!(parse("1..2s").is_err());
        assert!(parse("300000000000y").unwrap_err().contains("out of range"));
        assert_eq!(
            parse("500000y"),
            Ok(Some(Duration::from_secs(500_000 * 31_557_600)))
        );
    }
}

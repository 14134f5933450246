//! Time helpers: the store speaks Unix milliseconds, the wire RFC 3339 (UTC).

use time::OffsetDateTime;

use crate::rfc3339;

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    let now = OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as i64
}

/// RFC 3339 (UTC, millisecond precision) of a Unix-millisecond time.
pub fn fmt_ms(ms: i64) -> String {
    rfc3339::format(rfc3339::from_unix_ms(ms))
}

/// Parses RFC 3339 into Unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    rfc3339::parse(s).map(rfc3339::to_unix_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let ms = 1_700_000_000_123;
        let s = fmt_ms(ms);
        assert_eq!(s, "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_rfc3339(&s), Some(ms));
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20Z"),
            Some(1_700_000_000_000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert!(now_ms() > ms);
    }
}

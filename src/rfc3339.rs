//! The one RFC 3339 (UTC) formatter and parser: every time on the wire, in the spool and in
//! status lines goes through here (the `time` crate does the work).

use std::time::{Duration, SystemTime};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// What a time that cannot be formatted (out of the calendar's range) is shown as.
const EPOCH: &str = "1970-01-01T00:00:00Z";

/// RFC 3339 (UTC) of a time, with as many fractional digits as it has (none for whole
/// seconds).
pub fn format(t: SystemTime) -> String {
    OffsetDateTime::from(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| EPOCH.to_owned())
}

/// A time in RFC 3339; `None` when it is not one.
pub fn parse(s: &str) -> Option<SystemTime> {
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// The time `ms` Unix milliseconds stand for.
pub fn from_unix_ms(ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        SystemTime::UNIX_EPOCH + d
    } else {
        SystemTime::UNIX_EPOCH - d
    }
}

/// Unix milliseconds of a time (negative before the epoch).
pub fn to_unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = from_unix_ms(1_700_000_000_123);
        assert_eq!(format(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(parse("2023-11-14T22:13:20.123Z"), Some(t));
        assert_eq!(format(SystemTime::UNIX_EPOCH), EPOCH);
        assert_eq!(
            format(SystemTime::UNIX_EPOCH + Duration::from_secs(1)),
            "1970-01-01T00:00:01Z"
        );
        assert_eq!(to_unix_ms(t), 1_700_000_000_123);
        assert_eq!(to_unix_ms(from_unix_ms(-1500)), -1500);
        assert_eq!(parse("yesterday"), None);
    }
}

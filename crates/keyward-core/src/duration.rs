//! Duration strings of the HTTP API and config: `"500ms"`, `"90s"`, `"15m"`, `"24h"`, `"30d"`,
//! `"2w"`, and concatenations such as `"1h30m"`.
//!
//! Units: `ms`, `s`, `m` (minutes), `h`, `d` (24 h), `w` (7 d). Each part is a decimal count
//! followed by a unit; parts may come in any order and add up. `"0"` alone is zero. Negative
//! values, fractions, spaces and unknown units are refused. Precision is one millisecond.

use time::Duration;

const UNITS: [(&str, u128); 6] = [
    ("w", 604_800_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

fn unit_ms(unit: &str) -> Option<u128> {
    UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|&(_, ms)| ms)
}

/// Parses a duration string (see the module docs).
pub fn parse(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err("duration must not be empty; use e.g. \"90s\", \"15m\", \"24h\"".to_owned());
    }
    if s.starts_with('-') {
        return Err("duration must not be negative".to_owned());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let too_large = || "duration is too large".to_owned();
    let max = i64::MAX as u128;
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (number, after) = rest.split_at_checked(digits).unwrap_or((rest, ""));
        if number.is_empty() {
            return Err(format!(
                "expected a number in duration {s:?}; use e.g. \"90s\", \"1h30m\""
            ));
        }
        if after.starts_with(['.', ',']) {
            return Err(format!(
                "fractions are not supported in duration {s:?}; use a smaller unit (90m, not 1.5h)"
            ));
        }
        let letters = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, next) = after.split_at_checked(letters).unwrap_or((after, ""));
        if unit.is_empty() {
            return Err(format!(
                "missing unit after {number} in duration {s:?}; use ms, s, m, h, d or w"
            ));
        }
        let per = unit_ms(unit).ok_or_else(|| {
            format!("unknown unit {unit:?} in duration {s:?}; use ms, s, m, h, d or w")
        })?;
        // Digits beyond what fits are an overflow, not a parse error.
        let count: u128 = number.parse().map_err(|_| too_large())?;
        total = count
            .checked_mul(per)
            .and_then(|ms| total.checked_add(ms))
            .filter(|&t| t <= max)
            .ok_or_else(too_large)?;
        rest = next;
    }
    let ms = i64::try_from(total).map_err(|_| too_large())?;
    Ok(Duration::milliseconds(ms))
}

/// The shortest string that [`parse`] reads back as `d` (ties go to fewer parts, then
/// larger units): `90s`, `1w`, `1d90s`, `1500ms`. Sub-millisecond remainders are dropped;
/// zero is `"0s"`; a negative duration gets a leading `-` (which `parse` refuses).
pub fn format(d: Duration) -> String {
    let ms = d.whole_milliseconds();
    let sign = if ms < 0 { "-" } else { "" };
    let total = ms.unsigned_abs();
    if total == 0 {
        return "0s".to_owned();
    }
    // Every non-empty set of units, filled greedily (largest unit takes the most). Each unit
    // of the set must get a non-zero count, otherwise a smaller set gives the same string.
    let mut best: Option<(usize, u32, String)> = None;
    for mask in 1u32..(1 << UNITS.len()) {
        let mut rem = total;
        let mut out = String::new();
        let mut parts = 0;
        let mut used_all = true;
        for (i, &(name, per)) in UNITS.iter().enumerate() {
            if mask & (1 << i) == 0 {
                continue;
            }
            let count = rem / per;
            if count == 0 {
                used_all = false;
                break;
            }
            rem -= count * per;
            out.push_str(&count.to_string());
            out.push_str(name);
            parts += 1;
        }
        if !used_all || rem != 0 {
            continue;
        }
        let better = match &best {
            None => true,
            Some((len, p, _)) => (out.len(), parts) < (*len, *p),
        };
        if better {
            best = Some((out.len(), parts, out));
        }
    }
    // The `{ms}` set always qualifies, so `best` is set; fall back to it rather than panic.
    let body = best.map_or_else(|| format!("{total}ms"), |(_, _, s)| s);
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_examples_parse() {
        let cases = [
            ("90s", Duration::seconds(90)),
            ("15m", Duration::minutes(15)),
            ("24h", Duration::hours(24)),
            ("30d", Duration::days(30)),
            ("2w", Duration::weeks(2)),
            ("500ms", Duration::milliseconds(500)),
            ("1h30m", Duration::minutes(90)),
            ("30m1h", Duration::minutes(90)),
            ("1d2h3m4s5ms", Duration::milliseconds(93_784_005)),
            ("0s", Duration::ZERO),
            ("0", Duration::ZERO),
            ("007s", Duration::seconds(7)),
        ];
        for (s, d) in cases {
            assert_eq!(parse(s), Ok(d), "{s}");
        }
    }

    #[test]
    fn bad_durations_are_refused_with_a_reason() {
        for (s, why) in [
            ("", "empty"),
            ("-5s", "negative"),
            ("5", "missing unit"),
            ("5x", "unknown unit"),
            ("5sec", "unknown unit"),
            ("1.5h", "fractions"),
            ("h", "expected a number"),
            (" 5s", "expected a number"),
            ("5s ", "expected a number"),
            ("5S", "unknown unit"),
            ("99999999999999999999999999999999999999999w", "too large"),
            ("9223372036854775808ms", "too large"),
            ("15250284453w", "too large"),
            ("5s+", "expected a number"),
            ("5µs", "missing unit"),
        ] {
            let err = parse(s).expect_err(s);
            assert!(err.contains(why), "{s}: {err}");
        }
        assert!(parse("9223372036854775807ms").is_ok());
    }

    #[test]
    fn format_picks_the_shortest_form() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::seconds(90), "90s"),
            (Duration::seconds(60), "1m"),
            (Duration::minutes(90), "90m"),
            (Duration::hours(24), "1d"),
            (Duration::days(7), "1w"),
            (Duration::days(14), "2w"),
            (Duration::days(30), "30d"),
            (Duration::milliseconds(1500), "1500ms"),
            (Duration::milliseconds(500), "500ms"),
            (Duration::seconds(86_490), "1d90s"),
            (Duration::hours(1) + Duration::seconds(1), "1h1s"),
            (Duration::seconds(-90), "-90s"),
            (Duration::nanoseconds(1_500_000), "1ms"),
        ];
        for (d, s) in cases {
            assert_eq!(format(d), s, "{d:?}");
        }
    }
}

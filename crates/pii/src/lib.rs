//! Finds and redacts personal data in free text: email addresses, phone numbers, payment card
//! numbers, IBANs and IP addresses (v4 and v6). Card numbers must pass the Luhn check and IBANs
//! the ISO 13616 mod-97 check, so order numbers and other long digit runs are left alone; IP
//! addresses must parse as such, and loopback and unspecified addresses, which identify nobody,
//! are left alone.
//!
//! ```
//! let redacted = passerelle_pii::redact("Mail jane.doe@example.com or call +33 6 12 34 56 78.");
//! assert_eq!(redacted.text, "Mail [EMAIL] or call [PHONE].");
//! assert_eq!(redacted.spans.len(), 2);
//! ```

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::LazyLock,
};

use regex::Regex;
use serde::Serialize;

/// A kind of personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    Email,
    Phone,
    CardNumber,
    Iban,
    IpAddress,
}

impl PiiKind {
    /// What replaces it in redacted text.
    pub fn placeholder(self) -> &'static str {
        match self {
            PiiKind::Email => "[EMAIL]",
            PiiKind::Phone => "[PHONE]",
            PiiKind::CardNumber => "[CARD]",
            PiiKind::Iban => "[IBAN]",
            PiiKind::IpAddress => "[IP]",
        }
    }

    /// The stable name of the kind, as it is serialised: `email`, `phone`, `card_number`,
    /// `iban`, `ip_address`.
    pub fn name(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::CardNumber => "card_number",
            PiiKind::Iban => "iban",
            PiiKind::IpAddress => "ip_address",
        }
    }
}

/// Where one piece of personal data is, as byte offsets into the searched text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PiiSpan {
    pub kind: PiiKind,
    pub start: usize,
    pub end: usize,
}

/// Redacted text and what was found in the original.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted {
    pub text: String,
    pub spans: Vec<PiiSpan>,
}

/// Each pattern is a candidate; `valid` decides. Earlier detectors win overlaps: an IBAN's
/// digits are not also a phone number.
struct Detector {
    kind: PiiKind,
    pattern: Regex,
    valid: fn(&str) -> bool,
}

static DETECTORS: LazyLock<Vec<Detector>> = LazyLock::new(|| {
    let detector = |kind, pattern: &str, valid| Detector {
        kind,
        // The patterns are constants checked by the tests; failing here is a build mistake.
        pattern: Regex::new(pattern).expect("valid PII pattern"),
        valid,
    };
    vec![
        detector(
            PiiKind::Iban,
            r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b",
            iban_checksum_ok,
        ),
        detector(
            PiiKind::CardNumber,
            r"\b[0-9](?:[ -]?[0-9]){12,18}\b",
            luhn_ok,
        ),
        // Before the phone detector, which would read 192.168.100.200 as a number. The
        // candidates are wider than addresses (a word with colons, a run of dotted numbers) so
        // that `std::vec` or 1.2.3.4.5 fail as a whole instead of yielding a piece that parses.
        detector(
            PiiKind::IpAddress,
            r"[0-9A-Za-z.:]*:[0-9A-Za-z.:]*[0-9A-Za-z]",
            ipv6_ok,
        ),
        detector(PiiKind::IpAddress, r"\b[0-9]+(?:\.[0-9]+)+\b", ipv4_ok),
        detector(
            PiiKind::Email,
            r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
            |_| true,
        ),
        detector(
            PiiKind::Phone,
            r"(?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{1,4}\)[ .-]?)?\b[0-9]{1,4}(?:[ .-]?[0-9]{2,4}){2,5}\b",
            phone_digits_ok,
        ),
    ]
});

/// Every piece of personal data in `text`, in order, without overlaps.
pub fn find(text: &str) -> Vec<PiiSpan> {
    let mut spans: Vec<PiiSpan> = Vec::new();
    for detector in DETECTORS.iter() {
        for found in detector.pattern.find_iter(text) {
            let overlaps = spans
                .iter()
                .any(|s| found.start() < s.end && s.start < found.end());
            if !overlaps && (detector.valid)(found.as_str()) {
                spans.push(PiiSpan {
                    kind: detector.kind,
                    start: found.start(),
                    end: found.end(),
                });
            }
        }
    }
    spans.sort_by_key(|span| span.start);
    spans
}

/// `text` with every piece of personal data replaced by its kind's placeholder.
pub fn redact(text: &str) -> Redacted {
    let spans = find(text);
    let mut redacted = String::with_capacity(text.len());
    let mut copied = 0;
    for span in &spans {
        redacted.push_str(&text[copied..span.start]);
        redacted.push_str(span.kind.placeholder());
        copied = span.end;
    }
    redacted.push_str(&text[copied..]);
    Redacted {
        text: redacted,
        spans,
    }
}

fn digits(candidate: &str) -> impl Iterator<Item = u32> + '_ {
    candidate.chars().filter_map(|c| c.to_digit(10))
}

/// The Luhn check every payment card number passes, on 13 to 19 digits.
fn luhn_ok(candidate: &str) -> bool {
    let digits: Vec<u32> = digits(candidate).collect();
    if !(13..=19).contains(&digits.len()) || digits.iter().all(|&d| d == digits[0]) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| match (i % 2 == 1, d * 2) {
            (true, doubled) if doubled > 9 => doubled - 9,
            (true, doubled) => doubled,
            (false, _) => d,
        })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616: move the country code and check digits to the end, read letters as 10..35, and
/// the number must be 1 modulo 97.
fn iban_checksum_ok(candidate: &str) -> bool {
    let compact: Vec<char> = candidate.chars().filter(|c| *c != ' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let rearranged = compact[4..].iter().chain(&compact[..4]);
    let mut remainder: u32 = 0;
    for c in rearranged {
        let Some(value) = c.to_digit(36) else {
            return false;
        };
        let factor = if value >= 10 { 100 } else { 10 };
        remainder = (remainder * factor + value) % 97;
    }
    remainder == 1
}

/// A dotted-quad IPv4 address, octets without leading zeros, other than 0.0.0.0 and 127.x.
fn ipv4_ok(candidate: &str) -> bool {
    candidate
        .parse::<Ipv4Addr>()
        .is_ok_and(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

/// Any textual IPv6 form (`::` compression, embedded IPv4), other than `::` and `::1`.
fn ipv6_ok(candidate: &str) -> bool {
    candidate
        .parse::<Ipv6Addr>()
        .is_ok_and(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

/// Phone numbers have 8 to 15 digits (E.164 allows 15); fewer is a price or a count. Dates
/// have eight digits too, in shapes no phone plan uses.
fn phone_digits_ok(candidate: &str) -> bool {
    static DATE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r"^(?:[0-9]{4}[-./][0-9]{1,2}[-./][0-9]{1,2}|[0-9]{1,2}[-./][0-9]{1,2}[-./][0-9]{4})$",
        )
        .expect("valid date pattern")
    });
    (8..=15).contains(&digits(candidate).count()) && !DATE.is_match(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<PiiKind> {
        find(text).into_iter().map(|s| s.kind).collect()
    }

    #[test]
    fn finds_each_kind() {
        assert_eq!(kinds("write to a.b+c@mail.example.org"), [PiiKind::Email]);
        assert_eq!(kinds("call +1 (415) 555-0132 now"), [PiiKind::Phone]);
        assert_eq!(kinds("ring 06 12 34 56 78"), [PiiKind::Phone]);
        assert_eq!(kinds("card 4111 1111 1111 1111 exp"), [PiiKind::CardNumber]);
        assert_eq!(kinds("card 5500-0000-0000-0004"), [PiiKind::CardNumber]);
        assert_eq!(
            kinds("IBAN GB82 WEST 1234 5698 7654 32 please"),
            [PiiKind::Iban]
        );
        assert_eq!(kinds("IBAN DE89370400440532013000"), [PiiKind::Iban]);
    }

    #[test]
    fn finds_ip_addresses() {
        assert_eq!(kinds("from 203.0.113.7 at noon"), [PiiKind::IpAddress]);
        assert_eq!(kinds("gateway 192.168.100.200."), [PiiKind::IpAddress]);
        assert_eq!(
            kinds("host 2001:db8::8a2e:370:7334 up"),
            [PiiKind::IpAddress]
        );
        assert_eq!(
            kinds("full 2001:0db8:0000:0000:0000:ff00:0042:8329"),
            [PiiKind::IpAddress]
        );
        assert_eq!(kinds("link fe80::1, ok"), [PiiKind::IpAddress]);
        assert_eq!(kinds("mapped ::ffff:198.51.100.4"), [PiiKind::IpAddress]);
        assert_eq!(
            kinds("http://[2001:db8::1]:8080/ and http://10.1.2.3:80/"),
            [PiiKind::IpAddress, PiiKind::IpAddress]
        );
        let text = "ssh admin@10.0.0.5 then ping 2001:db8::2";
        let redacted = redact(text);
        assert_eq!(redacted.text, "ssh admin@[IP] then ping [IP]");
        assert_eq!(
            &text[redacted.spans[1].start..redacted.spans[1].end],
            "2001:db8::2"
        );
    }

    #[test]
    fn ip_look_alikes_are_left_alone() {
        for text in [
            "version 1.2.3 or 1.2.3.4.5",
            "pi is 3.14159",
            "octets 256.1.1.1 and 01.2.3.4",
            "at 12:30:45 sharp",
            "use std::collections::HashMap;",
            "mac 00:1A:2B:3C:4D:5E",
            "localhost:8080 and 127.0.0.1 and 0.0.0.0 and ::1",
            "ratio 16:9, see a:b",
        ] {
            assert!(kinds(text).is_empty(), "{text}: {:?}", find(text));
        }
    }

    #[test]
    fn kinds_have_stable_names() {
        assert_eq!(PiiKind::IpAddress.name(), "ip_address");
        assert_eq!(PiiKind::CardNumber.name(), "card_number");
        assert_eq!(PiiKind::IpAddress.placeholder(), "[IP]");
    }

    #[test]
    fn checksums_reject_look_alikes() {
        // One digit off: neither Luhn nor mod 97 holds.
        assert!(kinds("card 4111 1111 1111 1112").is_empty());
        // The digits of a broken IBAN may still read as a phone number; never as an IBAN.
        assert!(!kinds("IBAN GB82 WEST 1234 5698 7654 33").contains(&PiiKind::Iban));
        assert!(kinds("order 2024-05-01, total 1234.50").is_empty());
        assert!(kinds("due 01/05/2024").is_empty());
        assert!(kinds("version 1.2.3 of 12 items").is_empty());
    }

    #[test]
    fn redacts_in_place_and_keeps_the_rest() {
        let text = "Jane (jane@example.com, 4111111111111111) lives here.";
        let redacted = redact(text);
        assert_eq!(redacted.text, "Jane ([EMAIL], [CARD]) lives here.");
        assert_eq!(
            &text[redacted.spans[0].start..redacted.spans[0].end],
            "jane@example.com"
        );
        assert_eq!(redact("nothing here").text, "nothing here");
        assert_eq!(redact("café ☕ bob@example.fr").text, "café ☕ [EMAIL]");
    }
}

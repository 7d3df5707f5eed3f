//! The `h2c` port's peek at an HTTP/2 connection's first request name (a
//! cluster node carries the connection by it).

use opennotr_gateway::fuzzing::{h2_ack_filter, h2_first_name, H2Scan, H2Scanner};

use crate::{pieces, split_ctl};

/// The verdict on a connection's first bytes never changes once given: a
/// shorter prefix (the control byte picks where it is cut) says `More` or
/// the same, and so does reading on from it; a name is a lowercase DNS
/// name. The filter of the first
/// SETTINGS ack takes out nine bytes or none (less an incomplete frame
/// header it holds back), however the bytes are split.
pub fn h2c_name(data: &[u8]) {
    let (ctl, data) = split_ctl(data);
    let whole = h2_first_name(data);
    let cut = if data.is_empty() { 0 } else { usize::from(ctl) * data.len() / 255 };
    let part = h2_first_name(&data[..cut]);
    assert!(part == H2Scan::More || part == whole, "{part:?} on a prefix, {whole:?} on the whole");
    // Read on from the prefix, as the port does: the same verdict.
    let mut scanner = H2Scanner::default();
    if scanner.scan(&data[..cut]) == H2Scan::More {
        assert_eq!(scanner.scan(data), whole, "read on from {cut} bytes");
    }
    let (whole_out, held) = h2_ack_filter([data]);
    let (split_out, split_held) = h2_ack_filter(pieces(data, ctl));
    assert_eq!((&whole_out, held), (&split_out, split_held), "the filter depends on how the bytes were split");
    let passed = whole_out.len() + held;
    assert!(passed == data.len() || passed + 9 == data.len(), "{passed} of {} passed", data.len());
    if let H2Scan::Name(Some(name)) = &whole {
        assert!(!name.is_empty() && name.len() <= 253, "{name:?}");
        assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)), "{name:?}");
    }
}

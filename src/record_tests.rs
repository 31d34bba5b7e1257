use super::*;
use proptest::prelude::*;

const KEY_A: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
const KEY_B: &str = "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08=";

fn record(json: &str) -> Result<NodeRecord, RecordError> {
    NodeRecord::parse(json)
}

#[test]
fn full_record_parses_and_round_trips() {
    let text = format!(
        r#"{{"v":1,"publicKey":"{KEY_A}","nextPublicKey":"{KEY_B}","endpoint":"203.0.113.7:51820","blocks":["10.244.3.0/26","10.244.3.64/26"],"keyEpoch":4}}"#
    );
    let parsed = record(&text).unwrap();
    assert_eq!(parsed.public_key.to_string(), KEY_A);
    assert_eq!(parsed.next_public_key.unwrap().to_string(), KEY_B);
    assert_eq!(parsed.endpoint.unwrap().to_string(), "203.0.113.7:51820");
    assert_eq!(parsed.blocks.len(), 2);
    assert_eq!(parsed.key_epoch, 4);
    assert_eq!(parsed.to_json(), text, "canonical form changed");
    assert_eq!(record(&parsed.to_json()).unwrap(), parsed);
}

#[test]
fn optional_fields_default() {
    let parsed = record(&format!(r#"{{"v":1,"publicKey":"{KEY_A}","blocks":[]}}"#)).unwrap();
    assert_eq!(parsed.endpoint, None);
    assert_eq!(parsed.next_public_key, None);
    assert_eq!(parsed.key_epoch, 0);
    assert_eq!(
        parsed.to_json(),
        format!(r#"{{"v":1,"publicKey":"{KEY_A}","blocks":[],"keyEpoch":0}}"#)
    );
}

fn code_of(json: String) -> &'static str {
    record(&json).unwrap_err().code()
}

#[test]
fn each_error_has_its_code() {
    let cases = [
        (
            format!(r#"{{"v":2,"publicKey":"{KEY_A}","blocks":[]}}"#),
            "unsupported_version",
        ),
        (format!(r#"{{"publicKey":"{KEY_A}","blocks":[]}}"#), "json"),
        (
            r#"{"v":1,"publicKey":"AAAA","blocks":[]}"#.to_string(),
            "bad_key",
        ),
        (
            r#"{"v":1,"publicKey":"not base64!","blocks":[]}"#.to_string(),
            "bad_key",
        ),
        (
            format!(r#"{{"v":1,"publicKey":"{KEY_A}","nextPublicKey":"{KEY_A}","blocks":[]}}"#),
            "next_key_is_current",
        ),
        (
            format!(r#"{{"v":1,"publicKey":"{KEY_A}","nextPublicKey":"x","blocks":[]}}"#),
            "bad_key",
        ),
        (
            format!(r#"{{"v":1,"publicKey":"{KEY_A}","blocks":["10.244.3.1/24"]}}"#),
            "non_canonical_block",
        ),
        (
            format!(r#"{{"v":1,"publicKey":"{KEY_A}","blocks":["10.244.3.0"]}}"#),
            "bad_block",
        ),
        (
            format!(r#"{{"v":1,"publicKey":"{KEY_A}","blocks":["10.244.3.0/33"]}}"#),
            "bad_block",
        ),
        (
            format!(
                r#"{{"v":1,"publicKey":"{KEY_A}","blocks":["10.244.0.0/16","10.244.3.0/24"]}}"#
            ),
            "overlapping_blocks",
        ),
        (
            format!(
                r#"{{"v":1,"publicKey":"{KEY_A}","blocks":["10.244.3.0/24","10.244.3.0/24"]}}"#
            ),
            "overlapping_blocks",
        ),
        (
            format!(r#"{{"v":1,"publicKey":"{KEY_A}","endpoint":"10.0.0.1","blocks":[]}}"#),
            "bad_endpoint",
        ),
        (
            format!(r#"{{"v":1,"publicKey":"{KEY_A}","endpoint":"10.0.0.1:0","blocks":[]}}"#),
            "bad_endpoint",
        ),
        (
            format!(r#"{{"v":1,"publicKey":"{KEY_A}","endpoint":"0.0.0.0:51820","blocks":[]}}"#),
            "bad_endpoint",
        ),
        (
            format!(r#"{{"v":1,"publicKey":"{KEY_A}","endpoint":"224.0.0.1:51820","blocks":[]}}"#),
            "bad_endpoint",
        ),
        (
            format!(r#"{{"v":1,"publicKey":"{KEY_A}","blocks":[],"extra":1}}"#),
            "json",
        ),
        (
            format!(r#"{{"v":1,"publicKey":"{KEY_A}","blocks":"10.244.0.0/16"}}"#),
            "json",
        ),
        ("[]".to_string(), "json"),
    ];
    for (json, code) in cases {
        assert_eq!(code_of(json.clone()), code, "{json}");
    }
}

#[test]
fn limits_are_enforced() {
    let huge = format!(
        r#"{{"v":1,"publicKey":"{KEY_A}","blocks":[],"pad":"{}"}}"#,
        "x".repeat(MAX_RECORD_BYTES)
    );
    assert_eq!(code_of(huge), "too_large");
    let many: Vec<String> = (0..=MAX_BLOCKS)
        .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
        .collect();
    let json = format!(
        r#"{{"v":1,"publicKey":"{KEY_A}","blocks":[{}]}}"#,
        many.join(",")
    );
    assert_eq!(code_of(json), "too_many_blocks");
}

#[test]
fn ipv6_endpoint_and_blocks_are_accepted() {
    let parsed = record(&format!(
        r#"{{"v":1,"publicKey":"{KEY_A}","endpoint":"[2001:db8::1]:51820","blocks":["fd00:10:244:3::/64","10.244.3.0/24"]}}"#
    ))
    .unwrap();
    assert_eq!(parsed.endpoint.unwrap().to_string(), "[2001:db8::1]:51820");
    assert_eq!(record(&parsed.to_json()).unwrap(), parsed);
}

#[test]
fn error_messages_name_the_field() {
    let error = record(r#"{"v":1,"publicKey":"AAAA","blocks":[]}"#).unwrap_err();
    assert!(error.to_string().contains("publicKey"), "{error}");
}

fn arb_key() -> impl Strategy<Value = PublicKey> {
    any::<[u8; 32]>()
        .prop_filter("zero key", |b| *b != [0; 32])
        .prop_map(PublicKey::from_bytes)
}

fn arb_record() -> impl Strategy<Value = NodeRecord> {
    (
        arb_key(),
        proptest::option::of(arb_key()),
        proptest::option::of((1u8..=254, 1u16..)),
        proptest::collection::btree_set(0u8..=255, 0..8),
        any::<u64>(),
    )
        .prop_filter_map(
            "next key equals key",
            |(key, next, endpoint, thirds, epoch)| {
                (next != Some(key)).then(|| NodeRecord {
                    public_key: key,
                    next_public_key: next,
                    endpoint: endpoint
                        .map(|(last, port)| SocketAddr::from(([198, 18, 0, last], port))),
                    // Distinct /24s never overlap.
                    blocks: thirds
                        .into_iter()
                        .map(|t| IpNetwork::new(IpAddr::from([10, 244, t, 0]), 24).unwrap())
                        .collect(),
                    key_epoch: epoch,
                })
            },
        )
}

proptest! {
    #[test]
    fn valid_records_round_trip(record in arb_record()) {
        prop_assert_eq!(NodeRecord::parse(&record.to_json()).unwrap(), record.clone());
        prop_assert_eq!(NodeRecord::from_value(record.to_value()).unwrap(), record);
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(text in ".{0,300}") {
        let _ = NodeRecord::parse(&text);
    }

    #[test]
    fn parsing_mangled_records_never_panics(record in arb_record(), cut in 0usize..200, byte in any::<u8>()) {
        let mut bytes = record.to_json().into_bytes();
        let at = cut.min(bytes.len().saturating_sub(1));
        if !bytes.is_empty() {
            bytes[at] = byte;
        }
        let _ = NodeRecord::parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn overlap_detection_matches_address_sets(a in 0u8..=255, la in 20u8..=26, b in 0u8..=255, lb in 20u8..=26) {
        let na = IpNetwork::new(IpAddr::from([10, 244, a, 0]), la).unwrap();
        let nb = IpNetwork::new(IpAddr::from([10, 244, b, 0]), lb).unwrap();
        let na = IpNetwork::new(na.network(), la).unwrap();
        let nb = IpNetwork::new(nb.network(), lb).unwrap();
        let set = |n: &IpNetwork| -> std::collections::BTreeSet<u32> {
            match n { IpNetwork::V4(v4) => v4.iter().map(u32::from).collect(), IpNetwork::V6(_) => Default::default() }
        };
        let shared = !set(&na).is_disjoint(&set(&nb));
        prop_assert_eq!(overlaps(&na, &nb), shared);
        prop_assert_eq!(covers(&na, &nb), set(&nb).is_subset(&set(&na)));
    }
}

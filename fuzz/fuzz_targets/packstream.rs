//! PackStream decoding of arbitrary bytes: no panic, no unbounded allocation, and whatever
//! decodes re-encodes to a canonical form that decodes to the same canonical form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memgraph_bolt::packstream::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = decode(data) else {
        return;
    };
    // Compared as bytes, not as values: a NaN float is not equal to itself.
    let mut canonical = Vec::new();
    encode(&value, &mut canonical).expect("a decoded value always encodes");
    let again = decode(&canonical).expect("an encoded value always decodes");
    let mut twice = Vec::new();
    encode(&again, &mut twice).expect("a decoded value always encodes");
    assert_eq!(canonical, twice, "encoding is not stable for {value:?}");
    let _ = value.display();
});

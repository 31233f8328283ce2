//! Request decoding: any bytes as the body of a create of any served kind
//! (the first byte picks the kind, the second strict field validation)
//! must give an object or an `ApiError` with a 4xx code, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orch_core::resource::RESOURCES;

fuzz_target!(|data: &[u8]| {
    let [kind, strict, body @ ..] = data else {
        return;
    };
    let resource = &RESOURCES[usize::from(*kind) % RESOURCES.len()];
    if let Err(e) = orch_core::typed::decode_new_object(resource, body, strict & 1 == 1) {
        assert!(
            (400..500).contains(&e.code),
            "{} answered {} for bad input: {}",
            resource.kind,
            e.code,
            e.message
        );
    }
});

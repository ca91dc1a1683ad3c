//! Fuzz target for the `.nqkv` reader: any input must give `Ok` or an error, never a panic,
//! an out-of-bounds access or an allocation out of proportion to the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexusquant_core::format::read;

fuzz_target!(|d: &[u8]| {
    if let Ok(file) = read(d) {
        // Touch every view so that accepted files are fully exercised too.
        for layer in file.layers() {
            for c in nexusquant_core::format::Component::ALL {
                let _ = layer.component(c).to_head_major();
            }
        }
    }
});

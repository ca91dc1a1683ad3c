//! One test made of crafted bytes for every `FormatError` variant the reader can return, plus
//! the writer's input checks.

#[path = "format_support/mod.rs"]
mod support;

use nexusquant_core::format::{
    read, to_vec, FormatError, InputError, LayerData, MetadataError, Nqkv, ParamError, Section,
    SectionId, HEADER_LEN, MAX_LAYERS, MAX_METADATA_BYTES, MAX_SECTIONS,
};
use support::*;

fn err(bytes: &[u8]) -> FormatError {
    match read(bytes) {
        Ok(_) => panic!("accepted a bad file"),
        Err(e) => e,
    }
}

fn sealed(edit: impl FnOnce(&mut Vec<u8>)) -> FormatError {
    let mut f = sample_file();
    edit(&mut f);
    reseal(&mut f);
    err(&f)
}

/// Adds `delta` to the little-endian u64 at `at`.
fn add_u64(f: &mut [u8], at: usize, delta: i64) {
    let v = u64::from_le_bytes(f[at..at + 8].try_into().unwrap());
    f[at..at + 8].copy_from_slice(&v.wrapping_add_signed(delta).to_le_bytes());
}

fn reassembled(edit: impl FnOnce(&mut Parts)) -> FormatError {
    let mut p = decompose(&sample_file());
    edit(&mut p);
    err(&assemble(&p))
}

/// Index of the first section with this kind, component, layer and index.
fn find(p: &Parts, kind: u16, component: u16, layer: u32, index: u32) -> usize {
    let id = SectionId {
        kind,
        component,
        layer,
        index,
    };
    p.sections.iter().position(|s| s.id == id).unwrap()
}

#[test]
fn sample_is_valid_and_reassembles_identically() {
    let f = sample_file();
    read(&f).unwrap();
    assert_eq!(assemble(&decompose(&f)), f);
}

#[test]
fn bad_magic() {
    let mut f = sample_file();
    f[0] ^= 1;
    assert!(matches!(err(&f), FormatError::BadMagic { .. }));
    assert!(matches!(err(b"NQKX"), FormatError::BadMagic { .. }));
    assert!(matches!(
        err(b"PK\x03\x04 a zip"),
        FormatError::BadMagic { .. }
    ));
}

#[test]
fn empty_and_short_prefix_are_truncated() {
    for n in [0, 3, 8, 63] {
        let f = sample_file();
        let e = err(&f[..n]);
        assert!(
            matches!(e, FormatError::Truncated { what: "header", .. }),
            "{n}: {e}"
        );
    }
}

#[test]
fn unsupported_version() {
    let mut f = sample_file();
    f[8] = 2;
    assert!(matches!(
        err(&f),
        FormatError::UnsupportedVersion { major: 2, minor: 0 }
    ));
    f[8] = 0;
    assert!(matches!(
        err(&f),
        FormatError::UnsupportedVersion { major: 0, .. }
    ));
}

#[test]
fn truncated_file() {
    let f = sample_file();
    let e = err(&f[..f.len() - 1]);
    assert!(
        matches!(e, FormatError::Truncated { what: "file", .. }),
        "{e}"
    );
}

#[test]
fn trailing_bytes() {
    let mut f = sample_file();
    f.push(0);
    assert!(matches!(err(&f), FormatError::TrailingBytes { .. }));
}

#[test]
fn header_checksum() {
    let mut f = sample_file();
    f[13] ^= 0x40; // a reserved flag bit
    assert!(matches!(
        err(&f),
        FormatError::Checksum {
            section: Section::Header,
            ..
        }
    ));
}

#[test]
fn table_checksum() {
    let mut f = sample_file();
    f[HEADER_LEN + 37] ^= 1; // reserved byte of entry 0
    assert!(matches!(
        err(&f),
        FormatError::Checksum {
            section: Section::Table,
            ..
        }
    ));
}

#[test]
fn chunk_checksum_is_found_by_read_and_reported_by_chunk_statuses() {
    let mut f = sample_file();
    let last = f.len() - 1;
    f[last] ^= 0x80;
    let e = err(&f);
    assert!(
        matches!(
            e,
            FormatError::Checksum {
                section: Section::Entry(..),
                ..
            }
        ),
        "{e}"
    );
    let parsed = Nqkv::parse(&f[..]).unwrap();
    let bad: Vec<_> = parsed
        .chunk_statuses()
        .into_iter()
        .filter(|s| !s.ok())
        .collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].entry.offset + bad[0].entry.length, f.len() as u64);
}

#[test]
fn metadata_checksum() {
    let mut f = sample_file();
    let off = u64::from_le_bytes(f[HEADER_LEN + 16..HEADER_LEN + 24].try_into().unwrap());
    f[off as usize + 2] ^= 4;
    assert!(matches!(err(&f), FormatError::Checksum { .. }));
}

#[test]
fn misaligned() {
    let e = sealed(|f| add_u64(f, entry_field(1, 16), 1));
    assert!(matches!(e, FormatError::Misaligned { .. }), "{e}");
}

#[test]
fn overlap() {
    let e = sealed(|f| add_u64(f, entry_field(2, 16), -64));
    assert!(matches!(e, FormatError::Overlap { .. }), "{e}");
}

#[test]
fn gap_between_sections() {
    let e = sealed(|f| add_u64(f, entry_field(2, 16), 64));
    assert!(matches!(e, FormatError::Gap { .. }), "{e}");
}

#[test]
fn gap_at_end_of_file() {
    let e = sealed(|f| {
        f.extend_from_slice(&[0u8; 64]);
        let len = f.len() as u64;
        f[16..24].copy_from_slice(&len.to_le_bytes());
    });
    assert!(
        matches!(
            e,
            FormatError::Gap {
                section: Section::FileEnd,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn out_of_range() {
    let e = sealed(|f| {
        let n = u32::from_le_bytes(f[28..32].try_into().unwrap()) as usize;
        add_u64(f, entry_field(n - 1, 24), 1);
    });
    assert!(matches!(e, FormatError::OutOfRange { .. }), "{e}");
}

#[test]
fn overflow() {
    let e = sealed(|f| {
        let n = u32::from_le_bytes(f[28..32].try_into().unwrap()) as usize;
        f[entry_field(n - 1, 24)..entry_field(n - 1, 32)].copy_from_slice(&u64::MAX.to_le_bytes());
    });
    assert!(matches!(e, FormatError::Overflow { .. }), "{e}");
}

#[test]
fn non_zero_padding() {
    // Padding is covered by no checksum: the explicit check must catch it.
    let mut f = sample_file();
    let meta_end = HEADER_LEN + 2 * 40; // the metadata section is short, padding follows it
    let entry0_off = u64::from_le_bytes(
        f[entry_field(0, 16)..entry_field(0, 24)]
            .try_into()
            .unwrap(),
    );
    let entry0_len = u64::from_le_bytes(
        f[entry_field(0, 24)..entry_field(0, 32)]
            .try_into()
            .unwrap(),
    );
    let pad = (entry0_off + entry0_len) as usize;
    assert!(pad > meta_end && pad % 64 != 0);
    f[pad] = 1;
    assert!(matches!(err(&f), FormatError::NonZeroPadding { .. }));
}

#[test]
fn count_over_limit() {
    let e = sealed(|f| f[28..32].copy_from_slice(&(MAX_SECTIONS + 1).to_le_bytes()));
    assert!(
        matches!(
            e,
            FormatError::CountOverLimit {
                what: "section_count",
                ..
            }
        ),
        "{e}"
    );
    let e = sealed(|f| f[24..28].copy_from_slice(&(MAX_LAYERS + 1).to_le_bytes()));
    assert!(
        matches!(
            e,
            FormatError::CountOverLimit {
                what: "layer_count",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn table_length_mismatch() {
    let e = sealed(|f| add_u64(f, 40, 40));
    assert!(
        matches!(
            e,
            FormatError::ShapeMismatch {
                section: Section::Table,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn unexpected_section() {
    let e = reassembled(|p| p.sections.swap(0, 1));
    assert!(matches!(e, FormatError::UnexpectedSection { .. }), "{e}");
    let e = reassembled(|p| {
        let i = find(p, 4, 0, 0, 0);
        p.sections.swap(i, i + 1);
    });
    assert!(matches!(e, FormatError::UnexpectedSection { .. }), "{e}");
}

#[test]
fn missing_section() {
    let e = reassembled(|p| {
        p.sections.pop();
    });
    assert!(matches!(e, FormatError::MissingSection { .. }), "{e}");
}

#[test]
fn extension_sections_need_a_higher_minor() {
    let extension = Sec {
        id: SectionId {
            kind: 0x100,
            component: 0,
            layer: 0,
            index: 0,
        },
        tokens: 0,
        bytes: b"future".to_vec(),
    };
    let e = reassembled(|p| p.sections.push(extension.clone()));
    assert!(matches!(e, FormatError::UnexpectedSection { .. }), "{e}");
    let mut p = decompose(&sample_file());
    p.minor = 7;
    p.sections.push(extension.clone());
    let f = assemble(&p);
    let parsed = read(&f).unwrap();
    assert_eq!(parsed.version(), (1, 7));
    assert_eq!(parsed.num_layers(), 2);
    // A known kind after the canonical sections is still out of place.
    let mut p = decompose(&sample_file());
    p.minor = 7;
    let meta = p.sections[0].clone();
    p.sections.push(meta);
    assert!(matches!(
        err(&assemble(&p)),
        FormatError::UnexpectedSection { .. }
    ));
}

#[test]
fn shape_mismatch_in_chunks() {
    // Token counts must follow the 256-token rule and add up to the layer's count.
    let e = reassembled(|p| {
        let i = find(p, 4, 0, 0, 1);
        p.sections[i].tokens += 1;
    });
    assert!(
        matches!(
            e,
            FormatError::ShapeMismatch {
                what: "token count",
                ..
            }
        ),
        "{e}"
    );
    // The chunk length must be tokens * batch * heads * row bytes.
    let e = reassembled(|p| {
        let i = find(p, 4, 0, 0, 1);
        p.sections[i].bytes.pop();
    });
    assert!(
        matches!(
            e,
            FormatError::ShapeMismatch {
                what: "length in bytes",
                ..
            }
        ),
        "{e}"
    );
    // Scales are 2 bytes per head-vector.
    let e = reassembled(|p| {
        let i = find(p, 4, 1, 1, 0);
        p.sections[i].bytes.extend_from_slice(&[0, 0]);
    });
    assert!(matches!(e, FormatError::ShapeMismatch { .. }), "{e}");
    // Aux data must match its declared shape.
    let e = reassembled(|p| {
        let i = find(p, 5, 0, 0, 0);
        p.sections[i].bytes.extend_from_slice(&[0; 4]);
    });
    assert!(matches!(e, FormatError::ShapeMismatch { .. }), "{e}");
}

fn edit_layer_record(layer: usize, at: usize, bytes: &[u8]) -> FormatError {
    reassembled(|p| {
        let r = &mut p.sections[1].bytes[layer * 64 + at..layer * 64 + at + bytes.len()];
        r.copy_from_slice(bytes);
    })
}

#[test]
fn invalid_parameters() {
    let e = edit_layer_record(0, 16, &[9]);
    assert!(
        matches!(
            e,
            FormatError::InvalidParameter {
                layer: 0,
                error: ParamError::Bits {
                    field: "key_bits",
                    got: 9
                }
            }
        ),
        "{e}"
    );
    assert!(e
        .to_string()
        .contains("key_bits must be one of [1, 2, 3, 4, 5, 6, 7, 8], got 9"));
    let e = edit_layer_record(1, 17, &[0]);
    assert!(matches!(
        e,
        FormatError::InvalidParameter {
            layer: 1,
            error: ParamError::Bits {
                field: "value_bits",
                got: 0
            }
        }
    ));
    let e = edit_layer_record(0, 4, &12u32.to_le_bytes());
    assert!(matches!(
        e,
        FormatError::InvalidParameter {
            error: ParamError::HeadDim { got: 12 },
            ..
        }
    ));
    let e = edit_layer_record(0, 18, &[7]);
    assert!(matches!(
        e,
        FormatError::InvalidParameter {
            error: ParamError::RawDtype { got: 7 },
            ..
        }
    ));
    let e = edit_layer_record(0, 19, &[5]);
    assert!(matches!(
        e,
        FormatError::InvalidParameter {
            error: ParamError::LayerType { got: 5 },
            ..
        }
    ));
    let e = edit_layer_record(0, 20, &[1]);
    assert!(matches!(
        e,
        FormatError::InvalidParameter {
            error: ParamError::SlidingWindow { .. },
            ..
        }
    ));
    let e = edit_layer_record(0, 0, b"e9v1");
    assert!(matches!(
        e,
        FormatError::InvalidParameter {
            error: ParamError::Codec { .. },
            ..
        }
    ));
    let e = edit_layer_record(0, 8, &0u32.to_le_bytes());
    assert!(matches!(
        e,
        FormatError::InvalidParameter {
            error: ParamError::Range {
                field: "num_kv_heads",
                ..
            },
            ..
        }
    ));
    let e = edit_layer_record(0, 60, &65u32.to_le_bytes());
    assert!(matches!(
        e,
        FormatError::InvalidParameter {
            error: ParamError::Range {
                field: "aux_count",
                ..
            },
            ..
        }
    ));
}

fn edit_aux_record(record: usize, at: usize, bytes: &[u8]) -> FormatError {
    reassembled(|p| {
        let r = &mut p.sections[2].bytes[record * 56 + at..record * 56 + at + bytes.len()];
        r.copy_from_slice(bytes);
    })
}

#[test]
fn invalid_aux_records() {
    let e = edit_aux_record(0, 0, &[3]);
    assert!(matches!(
        e,
        FormatError::InvalidParameter {
            error: ParamError::AuxDtype { got: 3, .. },
            ..
        }
    ));
    for (at, bytes) in [
        (1usize, &[5u8][..]), // ndim
        (2, &[0]),            // name_len
        (2, &[33]),           // name_len
        (20, &[0xff]),        // name not UTF-8
        (40, b"x"),           // name padding
        (16, &[1]),           // dim beyond ndim (record 0 has ndim 1)
        (20, b"positions\0"), // duplicate name (record 1 is "positions")
    ] {
        let e = edit_aux_record(0, at, bytes);
        assert!(
            matches!(
                e,
                FormatError::InvalidParameter {
                    error: ParamError::AuxRecord { .. },
                    ..
                }
            ),
            "{at}: {e}"
        );
    }
}

#[test]
fn bad_metadata() {
    type Check = fn(&MetadataError) -> bool;
    let cases: [(&[u8], Check); 4] = [
        (b"{\"a\": \xff}", |m| {
            matches!(m, MetadataError::NotUtf8 { .. })
        }),
        (b"{\"a\": ", |m| matches!(m, MetadataError::NotJson { .. })),
        (b"[1, 2]", |m| {
            matches!(m, MetadataError::NotObject { found: "array" })
        }),
        (b"  ", |m| matches!(m, MetadataError::NotJson { .. })),
    ];
    for (bytes, check) in cases {
        let e = reassembled(|p| p.sections[0].bytes = bytes.to_vec());
        match &e {
            FormatError::BadMetadata(m) => assert!(check(m), "{e}"),
            _ => panic!("{e}"),
        }
    }
    let e = reassembled(|p| {
        let mut long = b"{}".to_vec();
        long.resize(MAX_METADATA_BYTES + 1, b' ');
        p.sections[0].bytes = long;
    });
    assert!(
        matches!(e, FormatError::BadMetadata(MetadataError::TooLong { .. })),
        "{e}"
    );
}

#[test]
fn writer_rejects_invalid_input() {
    let layers = sample_layers();
    let good: Vec<LayerData<'_>> = layers.iter().map(OwnedLayer::data).collect();

    let mut bad = good.clone();
    bad[1].params.key_bits = 9;
    let e = to_vec(SAMPLE_META, &bad).unwrap_err();
    assert!(matches!(
        e,
        FormatError::InvalidInput(InputError::Param {
            layer: 1,
            error: ParamError::Bits { .. }
        })
    ));

    let mut bad = good.clone();
    bad[0].k_codes = &bad[0].k_codes[1..];
    let e = to_vec(SAMPLE_META, &bad).unwrap_err();
    assert!(
        matches!(
            e,
            FormatError::InvalidInput(InputError::Shape { layer: 0, .. })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("k_codes must be"), "{e}");

    let mut bad = good.clone();
    bad[0].aux[1].name = "lengths";
    let e = to_vec(SAMPLE_META, &bad).unwrap_err();
    assert!(e.to_string().contains("duplicate name"), "{e}");

    let mut bad = good.clone();
    bad[0].aux[0].data = &[];
    let e = to_vec(SAMPLE_META, &bad).unwrap_err();
    assert!(
        matches!(e, FormatError::InvalidInput(InputError::Shape { .. })),
        "{e}"
    );

    let e = to_vec("[]", &good).unwrap_err();
    assert!(matches!(
        e,
        FormatError::InvalidInput(InputError::Metadata(MetadataError::NotObject { .. }))
    ));
}

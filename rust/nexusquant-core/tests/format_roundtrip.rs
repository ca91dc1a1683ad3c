//! Round trips through the writer and the readers, and atomic replacement of files.

#[path = "format_support/mod.rs"]
mod support;

use std::io::{self, Cursor, Seek, SeekFrom, Write};

use nexusquant_core::format::{
    atomic_write, open, read, to_vec, write, write_file, AuxDtype, Component, FormatError,
    LayerData, LayerType, RawDtype, ALIGNMENT, CHUNK_TOKENS, MAGIC,
};
use support::*;

fn check_round_trip(layers: &[OwnedLayer], meta: &str) -> Vec<u8> {
    let data: Vec<LayerData<'_>> = layers.iter().map(OwnedLayer::data).collect();
    let bytes = to_vec(meta, &data).unwrap();
    assert_eq!(bytes[..8], MAGIC);
    let file = read(&bytes).unwrap();
    assert_eq!(file.metadata(), meta);
    assert_eq!(file.num_layers(), layers.len());
    assert_eq!(file.file_len(), bytes.len() as u64);
    for (view, layer) in file.layers().zip(layers) {
        assert_eq!(*view.params, layer.params);
        for (c, original) in Component::ALL.iter().zip(&layer.comps) {
            let v = view.component(*c);
            assert_eq!(v.tokens, layer.params.tokens(*c));
            assert_eq!(&v.to_head_major(), original, "{}", c.name());
        }
        assert_eq!(view.aux.len(), layer.aux.len());
        for (a, (name, dtype, shape, bytes)) in view.aux.iter().zip(&layer.aux) {
            assert_eq!(
                (a.name, a.dtype, a.shape, a.data),
                (&name[..], *dtype, &shape[..], &bytes[..])
            );
        }
    }
    for s in file.sections() {
        assert_eq!(s.offset % ALIGNMENT, 0);
        assert!(s.tokens <= CHUNK_TOKENS);
    }
    bytes
}

#[test]
fn round_trip_sample() {
    check_round_trip(&sample_layers(), SAMPLE_META);
}

#[test]
fn round_trip_awkward_shapes() {
    let mut rng = Rng(99);
    let mut layers = Vec::new();
    for (i, &(d, kb, vb, tokens)) in [
        (64, 2, 2, (0, 0, 0)),
        (80, 3, 2, (1, 1, 1)),
        (96, 4, 3, (0, 255, 2)),
        (128, 2, 4, (4, 256, 0)),
        (8, 1, 8, (3, 257, 7)),
        (256, 3, 3, (0, 513, 128)),
    ]
    .iter()
    .enumerate()
    {
        let mut p = params(d, kb, vb, tokens);
        p.batch = 1 + (i as u32 % 3);
        p.num_kv_heads = 1 + (i as u32 % 4);
        p.raw_dtype = [RawDtype::F32, RawDtype::F16, RawDtype::BF16][i % 3];
        if i % 2 == 1 {
            p.layer_type = LayerType::Sliding { window: 4096 };
        }
        let aux: &[(&str, AuxDtype, &[u64])] = match i {
            0 => &[("scalar", AuxDtype::I64, &[])],
            1 => &[("empty", AuxDtype::I32, &[0])],
            2 => &[
                ("rows", AuxDtype::I32, &[3]),
                ("pos", AuxDtype::I64, &[1, 2, 3, 4]),
            ],
            _ => &[],
        };
        layers.push(OwnedLayer::random(&mut rng, p, aux));
    }
    check_round_trip(&layers, r#"{"nested": {"a": [1, 2.5, null]}, "s": "ü"}"#);
}

#[test]
fn round_trip_no_layers() {
    let bytes = check_round_trip(&[], "{}");
    assert_eq!(read(&bytes).unwrap().num_layers(), 0);
}

#[test]
fn chunks_are_token_major_prefixes() {
    let layers = sample_layers();
    let bytes = check_round_trip(&layers, SAMPLE_META);
    let file = read(&bytes).unwrap();
    let layer = file.layer(0).unwrap();
    let codes = layer.component(Component::KCodes);
    let p = &layers[0].params;
    let row = p.row_bytes(Component::KCodes) as usize;
    // Token t of (b, h) in the head-major input is row t * B * H + b * H + h of the view.
    let (b, h, t) = (1usize, 1usize, 299usize);
    let src = ((b * p.num_kv_heads as usize + h) * p.n_compressed as usize + t) * row;
    assert_eq!(
        codes.row(t as u32, b as u32, h as u32).unwrap(),
        &layers[0].comps[0][src..src + row]
    );
    assert!(codes.row(300, 0, 0).is_none());
}

#[test]
fn write_file_and_open_mmap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.nqkv");
    let layers = sample_layers();
    let data: Vec<LayerData<'_>> = layers.iter().map(OwnedLayer::data).collect();
    let n = write_file(&path, SAMPLE_META, &data).unwrap();
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(n, on_disk.len() as u64);
    assert_eq!(on_disk, to_vec(SAMPLE_META, &data).unwrap());
    let mapped = open(&path).unwrap();
    assert_eq!(mapped.as_bytes(), &on_disk[..]);
    let k = mapped.layer(1).unwrap();
    assert_eq!(
        k.component(Component::VWindow).to_head_major(),
        layers[1].comps[7]
    );
    let missing = open(dir.path().join("missing.nqkv")).unwrap_err();
    assert!(matches!(missing, FormatError::Io { .. }));
}

#[test]
fn write_into_a_sink_at_an_offset() {
    let layers = sample_layers();
    let data: Vec<LayerData<'_>> = layers.iter().map(OwnedLayer::data).collect();
    let mut sink = Cursor::new(b"prefix".to_vec());
    sink.seek(SeekFrom::End(0)).unwrap();
    let n = write(&mut sink, SAMPLE_META, &data).unwrap();
    let out = sink.into_inner();
    assert_eq!(out.len() as u64, 6 + n);
    assert_eq!(&out[6..], &to_vec(SAMPLE_META, &data).unwrap()[..]);
}

/// A sink that fails after `budget` bytes.
struct FailingSink {
    inner: Cursor<Vec<u8>>,
    budget: usize,
}

impl Write for FailingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.inner.get_ref().len() + buf.len() > self.budget {
            return Err(io::Error::other("injected failure"));
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for FailingSink {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[test]
fn sink_failure_is_reported() {
    let layers = sample_layers();
    let data: Vec<LayerData<'_>> = layers.iter().map(OwnedLayer::data).collect();
    let mut sink = FailingSink {
        inner: Cursor::new(Vec::new()),
        budget: 5000,
    };
    let e = write(&mut sink, SAMPLE_META, &data).unwrap_err();
    assert!(matches!(e, FormatError::Sink(_)), "{e}");
}

fn dir_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn failed_write_leaves_previous_file_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.nqkv");
    let layers = sample_layers();
    let data: Vec<LayerData<'_>> = layers.iter().map(OwnedLayer::data).collect();
    write_file(&path, SAMPLE_META, &data).unwrap();
    let before = std::fs::read(&path).unwrap();

    // A writer that fails midway, after writing part of the new file.
    let e = atomic_write(&path, |file| {
        file.write_all(&before[..before.len() / 2])?;
        Err::<(), _>(io::Error::other("injected failure"))
    })
    .unwrap_err();
    assert_eq!(e.to_string(), "injected failure");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(dir_names(dir.path()), ["cache.nqkv"]);

    // Invalid input fails before anything is written.
    let mut bad = data.clone();
    bad[0].params.head_dim = 12;
    assert!(write_file(&path, SAMPLE_META, &bad).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(dir_names(dir.path()), ["cache.nqkv"]);

    // A successful replacement.
    write_file(&path, "{}", &data[..1]).unwrap();
    assert_eq!(
        read(&std::fs::read(&path).unwrap()).unwrap().num_layers(),
        1
    );
    assert_eq!(dir_names(dir.path()), ["cache.nqkv"]);
}

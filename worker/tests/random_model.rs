//! `model init`: every named shape has its checkpoint's published parameter count, loads as its
//! architecture with exactly that shape, and the default model's shape is the default model's.

mod common;

use circuit_sweep_worker::random_model::{
    self as rm, InitError, InitOptions, Overrides, Shape, WeightDtype,
};
use circuit_sweep_worker::{LoadOptions, load_model};

fn make(dir: &std::path::Path, shape: &Shape, dtype: WeightDtype, seed: u64) -> u64 {
    let opts = InitOptions {
        dtype,
        seed,
        ..InitOptions::default()
    };
    rm::make(dir, shape, &opts, &mut |_| {}).unwrap()
}

#[test]
fn every_shape_has_its_checkpoints_published_parameter_count() {
    for name in rm::preset_names() {
        let s = Shape::preset(name, &Overrides::default()).unwrap();
        assert_eq!(
            Some(s.parameters()),
            rm::published_parameters(name),
            "{name}"
        );
    }
}

#[test]
fn every_shape_loads_as_its_architecture_with_its_shape() {
    let tmp = tempfile::tempdir().unwrap();
    for name in rm::preset_names() {
        // One block of the shape's own widths; a small vocabulary keeps the files small. The
        // biggest blocks (7B and up) are left to the parameter counts above.
        let over = Overrides {
            layers: Some(1),
            vocab: Some(1024),
            ..Overrides::default()
        };
        let s = Shape::preset(name, &over).unwrap();
        if s.parameters() > 100_000_000 {
            continue;
        }
        let dir = tmp.path().join(name);
        let n = make(&dir, &s, WeightDtype::Bf16, 1);
        let loaded =
            load_model(&dir, &LoadOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let i = loaded.model.info();
        assert_eq!(i.architecture, s.architecture, "{name}");
        assert_eq!(
            (
                i.n_layers,
                i.n_heads,
                i.n_kv_heads,
                i.d_model,
                i.d_head,
                i.d_mlp
            ),
            (1, s.heads, s.kv_heads, s.d_model, s.d_head(), s.d_mlp),
            "{name}"
        );
        assert_eq!(
            (i.vocab_size, i.context_length),
            (1024, s.context),
            "{name}"
        );
        assert_eq!(i.tied_embeddings, s.tied, "{name}");
        assert_eq!(i.parameters, n, "{name}");
        let tok = loaded.tokenizer.expect("a tokenizer is written");
        assert_eq!(tok.vocab_size(), 1024, "{name}");
        // The model runs on its own tokenizer's ids.
        let ids = tok
            .encode_plain("The war lasted from the year 1732 to the year 17")
            .unwrap();
        assert!(ids.iter().all(|&i| i < 1024));
        let logits = loaded.model.last_logits(&[ids], 1).unwrap();
        assert!(logits[0].iter().all(|x| x.is_finite()), "{name}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn the_default_models_shape_is_the_default_model() {
    let real = common::default_model();
    let r = real.model.info();
    let s = Shape::preset("smollm2-135m", &Overrides::default()).unwrap();
    assert_eq!(
        (
            r.architecture,
            r.n_layers,
            r.n_heads,
            r.n_kv_heads,
            r.d_model,
            r.d_mlp
        ),
        (
            s.architecture,
            s.layers,
            s.heads,
            s.kv_heads,
            s.d_model,
            s.d_mlp
        )
    );
    assert_eq!(
        (r.vocab_size, r.tied_embeddings, r.rope_theta),
        (s.vocab, s.tied, Some(s.rope_theta))
    );
    assert_eq!(r.parameters, s.parameters());
}

#[test]
fn the_same_seed_writes_the_same_file_and_another_seed_another() {
    let tmp = tempfile::tempdir().unwrap();
    let over = |heads| Overrides {
        layers: Some(2),
        d_model: Some(128),
        heads: Some(heads),
        vocab: Some(300),
        ..Overrides::default()
    };
    // 8 key/value groups do not split 4 query heads.
    let e = Shape::preset("llama-3-8b", &over(4))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("4 query heads do not split into 8 key/value groups"),
        "{e}"
    );
    // The preset's grouping and MLP ratio stay.
    let s = Shape::preset("llama-3-8b", &over(16)).unwrap();
    assert_eq!((s.kv_heads, s.d_head(), s.d_mlp), (8, 8, 448));
    let bytes = |seed: u64, sub: &str| {
        let dir = tmp.path().join(sub);
        make(&dir, &s, WeightDtype::F32, seed);
        std::fs::read(dir.join("model.safetensors")).unwrap()
    };
    let (a, b, c) = (bytes(3, "a"), bytes(3, "b"), bytes(4, "c"));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn bad_shapes_and_folders_are_refused_with_the_reason() {
    let err = |name: &str, over: Overrides| Shape::preset(name, &over).unwrap_err().to_string();
    let e = err("gpt3", Overrides::default());
    assert!(
        e.contains("unknown shape `gpt3`") && e.contains("llama-2-7b"),
        "{e}"
    );
    let e = err(
        "gpt2-small",
        Overrides {
            heads: Some(7),
            ..Overrides::default()
        },
    );
    assert!(e.contains("768 is not a multiple of 7 heads"), "{e}");
    let e = err(
        "pythia-70m",
        Overrides {
            kv_heads: Some(2),
            ..Overrides::default()
        },
    );
    assert!(e.contains("no grouped keys and values"), "{e}");
    // A NeoX head of 12 features would turn 3 of them.
    let e = err(
        "pythia-160m",
        Overrides {
            heads: Some(64),
            ..Overrides::default()
        },
    );
    assert!(e.contains("a head width of 12 gives 3 (a quarter)"), "{e}");
    let e = err(
        "smollm2-135m",
        Overrides {
            vocab: Some(100),
            ..Overrides::default()
        },
    );
    assert!(e.contains("256 byte tokens"), "{e}");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("keep.txt"), "mine").unwrap();
    let s = Shape::preset(
        "gpt2-small",
        &Overrides {
            layers: Some(1),
            vocab: Some(300),
            ..Overrides::default()
        },
    )
    .unwrap();
    let e = rm::make(tmp.path(), &s, &InitOptions::default(), &mut |_| {}).unwrap_err();
    assert!(matches!(e, InitError::NotEmpty(_)), "{e}");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("keep.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn a_cut_tokenizer_is_gpt2s_on_the_ids_it_keeps() {
    let tmp = tempfile::tempdir().unwrap();
    let over = |vocab| Overrides {
        layers: Some(1),
        d_model: Some(64),
        heads: Some(4),
        vocab: Some(vocab),
        ..Overrides::default()
    };
    let full_dir = tmp.path().join("full");
    make(
        &full_dir,
        &Shape::preset("gpt2-small", &over(50257)).unwrap(),
        WeightDtype::F32,
        0,
    );
    let cut_dir = tmp.path().join("cut");
    make(
        &cut_dir,
        &Shape::preset("llama-2-7b", &over(32000)).unwrap(),
        WeightDtype::F32,
        0,
    );
    let full = circuit_sweep_worker::load_tokenizer(&full_dir).unwrap();
    let cut = circuit_sweep_worker::load_tokenizer(&cut_dir).unwrap();
    assert_eq!((full.vocab_size(), cut.vocab_size()), (50257, 32000));
    let text = "Mary born in 3. Mary born in 4. Mary born in January 1 2 3 4 5 6";
    // Common words and numbers use early merges: the same ids in both.
    assert_eq!(
        full.encode_plain(text).unwrap(),
        cut.encode_plain(text).unwrap()
    );
    // A rare word needs late merges: the cut tokenizer spells it in more pieces, all in range.
    let rare = " Kierkegaardian hyperparameterization";
    let (a, b) = (
        full.encode_plain(rare).unwrap(),
        cut.encode_plain(rare).unwrap(),
    );
    assert!(
        b.len() >= a.len() && b.iter().all(|&i| i < 32000),
        "{a:?} {b:?}"
    );
}

//! The config's parsing and validation, case by case.

use super::*;

#[test]
fn rate_limit_prefixes_out_of_range_are_refused_with_their_name() {
    for (key, value) in [
        ("v4_prefix", 0),
        ("v4_prefix", 33),
        ("v6_prefix", 0),
        ("v6_prefix", 129),
    ] {
        let e = EdgedConfig::parse(&format!("[rate_limit]\n{key} = {value}\n"))
            .err()
            .unwrap_or_else(|| panic!("{key} = {value} was accepted"));
        assert!(format!("{e:#}").contains(key), "{key} = {value}: {e:#}");
    }
    // What the XDP program cannot run with is refused at parse, before any of a reload applies.
    for bad in [
        "burst = 0\npps = 10",
        "burst = 10\npps = 9223372036854775807",
    ] {
        let e = EdgedConfig::parse(&format!("[rate_limit]\nenabled = true\n{bad}\n")).unwrap_err();
        assert!(format!("{e:#}").contains("rate_limit"), "{bad}: {e:#}");
    }
    // Past u8 the TOML type refuses it.
    assert!(EdgedConfig::parse("[rate_limit]\nv6_prefix = 18446744073709551615\n").is_err());
    let ok = EdgedConfig::parse("[rate_limit]\nv4_prefix = 24\nv6_prefix = 48\n").unwrap();
    assert_eq!(
        (ok.rate_limit.v4_prefix, ok.rate_limit.v6_prefix),
        (Some(24), Some(48))
    );
}

#[test]
fn the_readme_example_config_parses() {
    let readme = include_str!("../../../README.md");
    let start = readme.find("```toml\n").expect("a toml block in README.md") + 8;
    let len = readme[start..].find("```").expect("closed block");
    let cfg = EdgedConfig::parse(&readme[start..start + len]).unwrap();
    assert_eq!(cfg.apps.len(), 2);
    assert_eq!(cfg.apps[0].allowed_backends, ["db.internal:8080"]);
    assert_eq!(cfg.apps[1].static_body.as_deref(), Some("ok\n"));
}

#[test]
fn split_app_functions_become_apps_at_internal_hosts() {
    let cfg = EdgedConfig::parse(
        r#"
        [[apps]]
        name = "shop"
        hosts = ["shop.example"]
        component = "entry.wasm"
        [[apps.functions]]
        name = "db"
        component = "fetcher.wasm"
        placement = { mode = "smart" }
        "#,
    )
    .unwrap();
    assert_eq!(cfg.apps.len(), 2);
    assert_eq!(cfg.apps[0].split_app.as_deref(), Some("shop"));
    let f = &cfg.apps[1];
    assert_eq!(f.name, "shop.db");
    assert_eq!(f.hosts, ["db.shop.fn.internal"]);
    assert_eq!(f.split_app.as_deref(), Some("shop"));
    assert_eq!(f.placement.mode, PlacementMode::Smart);
}

#[test]
fn empty_config_is_all_defaults() {
    let cfg = EdgedConfig::parse("").unwrap();
    assert_eq!(cfg.pin_dir, PathBuf::from(crate::DEFAULT_PIN_DIR));
    assert!(cfg.workers.steer);
    assert_eq!(cfg.xdp.mode, XdpAttachMode::Native);
}

#[test]
fn full_config_and_clear_errors() {
    let cfg = EdgedConfig::parse(
        r#"
        blocklist = ["203.0.113.0/24"]
        [xdp]
        interfaces = ["eth0"]
        mode = "generic"
        [rate_limit]
        enabled = true
        pps = 1000
        burst = 2000
        [[apps]]
        name = "hello"
        vips = ["10.0.0.1:80/tcp"]
        steer = false
        "#,
    )
    .unwrap();
    assert_eq!(cfg.xdp.mode, XdpAttachMode::Generic);
    assert!(!cfg.apps[0].steer && cfg.apps[0].rate_limit);
    let err = EdgedConfig::parse("[[apps]]\nname = \"x\"\nvips = [\"10.0.0.1/tcp\"]").unwrap_err();
    assert!(format!("{err:#}").contains("bad VIP"), "{err:#}");
    let err = EdgedConfig::parse(
        "[[apps]]\nname = \"shop\"\ncomponent = \"a.wasm\"\n[[apps.functions]]\nname = \"DB\"\ncomponent = \"b.wasm\"",
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("DNS label"), "{err:#}");
    let err = EdgedConfig::parse("[xdp]\nmdoe = \"native\"").unwrap_err();
    assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
}

#[test]
fn every_file_a_config_names_is_taken_relative_to_its_base_even_from_a_composed_copy() {
    let dir = std::env::temp_dir().join(format!("edgeplane-config-paths-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The fleet's composed copy sits elsewhere (beside the snapshot); the operator's file's
    // directory is the base.
    let copy = dir.join("composed.toml");
    std::fs::write(
        &copy,
        "[tls]\ncert = \"d.pem\"\nkey = \"d.key\"\n\
         [datacenter]\nname = \"pop\"\ntopology = \"t.toml\"\nkeys = \"k.toml\"\n\
         tls = { cert = \"dc.pem\", key = \"dc.key\", ca = \"ca.pem\" }\n\
         [control]\nnats = \"nats://127.0.0.1:4222\"\n\
         tls = { cert = \"n.pem\", key = \"n.key\", ca = \"nca.pem\" }\n\
         [[apps]]\nname = \"a\"\nhosts = [\"a.test\"]\ncomponent = \"a.wasm\"\n\
         tls = { cert = \"a.pem\", key = \"/etc/abs.key\" }\n",
    )
    .unwrap();
    let base = Path::new("/srv/edge");
    let (mut cfg, _) = EdgedConfig::read_relative_to(&copy, base).unwrap();
    let files: Vec<PathBuf> = cfg
        .file_paths_mut()
        .into_iter()
        .map(|p| p.clone())
        .collect();
    let names: Vec<&str> = files.iter().filter_map(|p| p.to_str()).collect();
    assert_eq!(
        names,
        [
            "/srv/edge/t.toml",
            "/srv/edge/k.toml",
            "/srv/edge/dc.pem",
            "/srv/edge/dc.key",
            "/srv/edge/ca.pem",
            "/srv/edge/n.pem",
            "/srv/edge/n.key",
            "/srv/edge/nca.pem",
            "/srv/edge/d.pem",
            "/srv/edge/d.key",
            "/srv/edge/a.wasm",
            "/srv/edge/a.pem",
            "/etc/abs.key",
        ]
    );
    // `read` takes the file's own directory.
    let (cfg, _) = EdgedConfig::read(&copy).unwrap();
    assert_eq!(cfg.tls.unwrap().cert, dir.join("d.pem"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_host_belongs_to_one_app_and_one_app_at_most_is_the_default() {
    let two = |a: &str, b: &str| {
        format!(
            "[[apps]]\nname = \"shop\"\ncomponent = \"a.wasm\"\n{a}\n\
             [[apps]]\nname = \"blog\"\ncomponent = \"b.wasm\"\n{b}\n"
        )
    };
    let claims = two(
        r#"hosts = ["shop.test"]"#,
        r#"hosts = ["www.test", "SHOP.test"]"#,
    );
    let err = format!("{:#}", EdgedConfig::parse(&claims).unwrap_err());
    assert!(
        err.contains("\"shop\" and \"blog\" both claim host \"SHOP.test\""),
        "{err}"
    );
    // Its field, for the error's line in the file.
    let invalid = EdgedConfig::parse(&claims).unwrap_err();
    assert_eq!(
        invalid.downcast_ref::<Invalid>().map(|i| i.field.as_str()),
        Some("apps[1].hosts[1]")
    );
    let err = format!(
        "{:#}",
        EdgedConfig::parse(&two("default = true", "default = true")).unwrap_err()
    );
    assert!(
        err.contains("\"shop\" and \"blog\" are both the default"),
        "{err}"
    );
    // One app naming its host twice, and one default, are fine.
    EdgedConfig::parse(&two(
        r#"hosts = ["shop.test", "Shop.test"]"#,
        "default = true",
    ))
    .unwrap();
}

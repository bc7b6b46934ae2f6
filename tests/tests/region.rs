//! POP -> region: the POP sends a request on to the region (which holds every app) instead of
//! refusing it when its workers are saturated, and instead of loading the code of a rarely
//! requested app that is not in its code cache. Both show in the response header and in the
//! placement status.

use std::time::Duration;

use edgeplane_testkit::{
    canonical::{self, Canonical, Tuning},
    raw_http::header,
    require_root,
};

fn fetcher_and_hello(url: &str, authority: &str) -> String {
    format!(
        "[[apps]]\nname = \"rare\"\nhosts = [\"rare.test\"]\ncomponent = \"{}\"\n\
         [[apps]]\nname = \"fetcher\"\nhosts = [\"fetch.test\"]\ncomponent = \"{}\"\n\
         env = {{ BACKEND_URL = \"{url}\" }}\nallowed_backends = [\"{authority}\"]\n\
         [[apps]]\nname = \"hello\"\nhosts = [\"hello.test\"]\ncomponent = \"{}\"\n",
        edgeplane_testkit::app("echo").display(),
        edgeplane_testkit::app("fetcher").display(),
        edgeplane_testkit::app("hello").display(),
    )
}

fn wait_status(
    world: &Canonical,
    app: &str,
    what: &str,
    wanted: impl Fn(&edgeplane_placement::AppStatus) -> bool,
) {
    world
        .wait_status(app, what, wanted, Duration::from_secs(5))
        .unwrap();
}

#[test]
fn a_saturated_pop_overflows_to_the_region_and_a_cold_rare_app_goes_there() {
    if !require_root("region") {
        return;
    }
    // The POP runs one instance at a time and keeps two apps' code in memory.
    let world = canonical::start_tuned(
        "region",
        &["pop", "region"],
        0.0,
        fetcher_and_hello,
        |dc| match dc {
            "pop" => Tuning {
                runtime: "max_in_flight = 1\ncache = { max_bytes = 536870912, max_apps = 2 }"
                    .into(),
                datacenter: "popular_rps = 1.0".into(),
            },
            _ => Tuning::default(),
        },
    );

    a_saturated_pop_overflows(&world);
    a_cold_rare_app_goes_to_the_region(&world);
    a_popular_app_is_served_here(&world);
}

/// Saturation: six concurrent fetcher requests (each ~160 ms of subrequests at the POP). One
/// runs at the POP; those arriving while it runs go to the region; none is refused.
fn a_saturated_pop_overflows(world: &Canonical) {
    let answers: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| s.spawn(|| world.through_pop("fetch.test", "/?k=2")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut local = 0;
    let mut overflowed = 0;
    for (status, headers, body, _) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert!(body.contains("\"statuses\":[200,200]"), "{body}");
        match header(headers, "x-edge-placement") {
            Some("local") => local += 1,
            Some("remote-region") => {
                assert_eq!(
                    header(headers, "x-edge-placement-reason"),
                    Some("saturated")
                );
                overflowed += 1;
            }
            other => panic!("unexpected placement {other:?}"),
        }
    }
    assert!(
        local >= 1 && overflowed >= 1,
        "local {local}, overflowed {overflowed}"
    );
    eprintln!(
        "6 concurrent requests at a POP running 1 instance: {local} local, {overflowed} to the region"
    );
    wait_status(world, "fetcher", "sent on to the region saturated", |s| {
        s.region_saturated
    });
}

/// Cold: `rare` was preloaded first and evicted by the two apps after it (two fit), and it has
/// had no requests: it goes to the region, which leaves the POP's cache alone.
fn a_cold_rare_app_goes_to_the_region(world: &Canonical) {
    let cache: serde_json::Value = serde_json::from_str(&world.admin("pop", "/cache")).unwrap();
    assert!(
        !cache.to_string().contains("\"rare\""),
        "rare resident at start: {cache}"
    );
    let (status, headers, body, _) = world.through_pop("rare.test", "/");
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-edge-placement"), Some("remote-region"));
    assert_eq!(header(&headers, "x-edge-placement-reason"), Some("cold"));
    wait_status(world, "rare", "sent on to the region cold", |s| {
        s.region_cold
    });
    let cache: serde_json::Value = serde_json::from_str(&world.admin("pop", "/cache")).unwrap();
    assert!(
        !cache.to_string().contains("\"rare\""),
        "rare loaded anyway: {cache}"
    );
}

/// Once requested often enough (1 req/s over 10 s at the worker) it is served here.
fn a_popular_app_is_served_here(world: &Canonical) {
    let mut sent = 1;
    loop {
        let (status, headers, body, _) = world.through_pop("rare.test", "/");
        assert_eq!(status, 200, "{body}");
        sent += 1;
        if header(&headers, "x-edge-placement") == Some("local") {
            break;
        }
        assert_eq!(header(&headers, "x-edge-placement-reason"), Some("cold"));
        assert!(
            sent <= 12,
            "rare still sent to the region after {sent} requests"
        );
    }
    eprintln!("rare served at the POP from its request {sent} on");
    let cache: serde_json::Value = serde_json::from_str(&world.admin("pop", "/cache")).unwrap();
    assert!(
        cache.to_string().contains("\"rare\""),
        "rare now resident: {cache}"
    );
}

//! A split app in the canonical world: the entry function `shop` (apps/split) calls its
//! functions `db` (fetcher: sequential subrequests to the backend, 80 ms from the POP and 5 ms
//! from dc2) and `greet` (hello) at `http://<function>.fn.internal/`. Each function has its own
//! placement: the engine moves `db` next to the backend and keeps `greet` (and the entry) at
//! the POP, and the entry's combined answer carries both results.

use std::time::{Duration, Instant};

use edgeplane_placement::Verdict;

use edgeplane_testkit::{
    canonical::{self, Canonical},
    raw_http::header,
    require_root,
};

fn split_app(url: &str, authority: &str) -> String {
    edgeplane_testkit::apps::split_shop_toml(
        "shop.test",
        url,
        authority,
        Some(r#"{ mode = "smart" }"#),
    )
}

/// The entry's combined answer: (db's placement, greet's placement), after checking both
/// functions' results.
fn shop(world: &Canonical) -> (String, String, Duration) {
    let (status, headers, body, took) = world.through_pop("shop.test", "/?k=3");
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-edge-placement"), Some("local"));
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let db = &v["functions"]["db"];
    let greet = &v["functions"]["greet"];
    assert_eq!(db["status"], 200, "{body}");
    let db_body: serde_json::Value = serde_json::from_str(db["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        db_body["statuses"],
        serde_json::json!([200, 200, 200]),
        "{body}"
    );
    assert_eq!(greet["status"], 200, "{body}");
    assert_eq!(greet["body"], "hello from wasm\n", "{body}");
    (
        db["placement"].as_str().unwrap().to_owned(),
        greet["placement"].as_str().unwrap().to_owned(),
        took,
    )
}

#[test]
fn a_split_apps_functions_are_placed_separately_and_combined() {
    if !require_root("split") {
        return;
    }
    let world = canonical::start("split", &["pop", "dc2"], 0.0, split_app);
    let pop_to_backend = world.plan.rtt("pop", "backend").unwrap();

    let (db, greet, took) = shop(&world);
    assert_eq!((db.as_str(), greet.as_str()), ("local", "local"));
    assert!(took >= pop_to_backend * 3, "db ran at the POP: {took:?}");

    let started = Instant::now();
    let mut requests = 1;
    let took = loop {
        let (db, greet, took) = shop(&world);
        requests += 1;
        assert_eq!(
            greet, "local",
            "greet calls no backend: it stays at the POP"
        );
        if db == "remote-dc2" {
            break took;
        }
        assert_eq!(db, "local");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "db not placed after {requests} requests: {}",
            world.admin("pop", "/placement")
        );
    };
    eprintln!(
        "split app: db placed at dc2 after {requests} requests ({:?}); a request then took {took:?}",
        started.elapsed()
    );
    assert!(took < pop_to_backend * 3, "db at dc2 is faster: {took:?}");
    std::thread::sleep(Duration::from_secs(2));
    let status = world.placement_status();
    assert_eq!(status["shop.db"].placed_at(), Some("dc2"), "{status:?}");
    assert_eq!(status["shop.greet"].verdict, Verdict::Local, "{status:?}");
    assert_eq!(status["shop"].verdict, Verdict::Local, "{status:?}");

    // Functions answer their app only: a client naming a function's host is refused.
    let (status, _, body, _) = world.through_pop("db.shop.fn.internal", "/");
    assert_eq!(status, 403, "{body}");
    // And dc2 served db's requests as handoffs, greet's none.
    let received = |app: &str| -> u64 {
        world.metric(
            "dc2",
            "edgeplane_app_handoffs_total",
            &[&format!("app=\"{app}\""), "outcome=\"received\""],
        )
    };
    assert!(received("shop.db") >= 1);
    assert_eq!(received("shop.greet"), 0);
}

//! What a reload changes among the apps a runtime serves.

use std::collections::HashMap;

use super::AppSpec;

/// What `AppRuntime::apply` changed, by app name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppChanges {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl AppChanges {
    /// The apps `new` adds to `old`, changes (any field of the spec, its digest included) and
    /// drops, by name, in `new`'s order (removed: `old`'s).
    pub fn between<'a>(old: impl IntoIterator<Item = &'a AppSpec>, new: &[AppSpec]) -> Self {
        let old: HashMap<&str, &AppSpec> = old.into_iter().map(|s| (s.name.as_str(), s)).collect();
        let mut changes = Self::default();
        for spec in new {
            match old.get(spec.name.as_str()) {
                None => changes.added.push(spec.name.clone()),
                Some(before) if *before != spec => changes.changed.push(spec.name.clone()),
                Some(_) => {}
            }
        }
        let mut removed: Vec<String> = old
            .keys()
            .filter(|name| !new.iter().any(|s| s.name == **name))
            .map(|name| (*name).to_owned())
            .collect();
        removed.sort();
        changes.removed = removed;
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, digest: &str) -> AppSpec {
        AppSpec {
            name: name.into(),
            component: format!("/c/{digest}.wasm").into(),
            digest: digest.into(),
            env: vec![],
            allowed_backends: vec![],
            limits: Default::default(),
            split_app: None,
        }
    }

    #[test]
    fn changes_between_two_sets_of_apps_by_name_and_by_any_field() {
        let old = [spec("a", "1"), spec("b", "1"), spec("gone", "1")];
        let mut env_changed = spec("b", "1");
        env_changed.env.push(("K".into(), "v".into()));
        let new = [spec("a", "1"), env_changed, spec("new", "2")];
        let c = AppChanges::between(&old, &new);
        assert_eq!(
            (c.added, c.changed, c.removed),
            (
                vec!["new".to_owned()],
                vec!["b".to_owned()],
                vec!["gone".to_owned()]
            )
        );
        let same = AppChanges::between(&old, &old);
        assert_eq!(same, AppChanges::default());
    }
}

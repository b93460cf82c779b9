//! Building the plan: shared stages, conflicting definitions, sweeps, cycles (moved out of
//! `src/plan` because it needs the built-in stage kinds, which the runner does not import).

use std::collections::BTreeSet;

use sheared::plan::Plan;
use sheared::recipe::{LoadOptions, load};
use sheared::stages::builtin;

fn plan_of(files: &[(&str, &str)]) -> Result<Plan, String> {
    let dir = tempfile::tempdir().unwrap();
    let mut recipes = Vec::new();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        recipes.extend(
            load(&path, &LoadOptions::default(), &builtin()).map_err(|error| error.to_string())?,
        );
    }
    Plan::build(recipes, &builtin()).map_err(|error| error.to_string())
}

const BASE: &str = "[stages.a]\nkind = \"command\"\nargv = [\"true\"]\n[stages.b]\nkind = \"command\"\nargv = [\"echo\", \"{inputs.x}\"]\ninputs = { x = { stage = \"a\" } }\n";

#[test]
fn identical_stages_of_two_recipes_are_one_node() {
    let other = "name = \"other\"\n[stages.a]\nkind = \"command\"\nargv = [\"true\"]\n[stages.c]\nkind = \"command\"\nargv = [\"echo\", \"{inputs.x}\"]\ninputs = { x = { stage = \"a\" } }\n";
    let plan = plan_of(&[("one.toml", BASE), ("two.toml", other)]).unwrap();
    assert_eq!(plan.nodes.len(), 3);
    let a = plan.find("a").unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(plan.nodes[a[0]].members.len(), 2);
    assert_eq!(plan.with_descendants(a[0]).len(), 3);
}

/// Each recipe is its own namespace: a stage name two recipes define differently is two nodes named
/// by their recipes, and what they share (identical definitions) stays one node.
#[test]
fn same_name_different_config_is_one_node_per_recipe() {
    let other = "name = \"other\"\n[stages.a]\nkind = \"command\"\nargv = [\"false\"]\n[stages.b]\nkind = \"command\"\nargv = [\"echo\", \"{inputs.x}\"]\ninputs = { x = { stage = \"a\" } }\n";
    let plan = plan_of(&[("one.toml", BASE), ("two.toml", other)]).unwrap();
    let ids: BTreeSet<&str> = plan.nodes.iter().map(|node| node.id.as_str()).collect();
    assert_eq!(
        ids,
        BTreeSet::from(["a[one]", "a[other]", "b[one]", "b[other]"]),
        "b's config is the same, its upstream is not"
    );
    assert_eq!(plan.find("a").unwrap().len(), 2);
    assert_eq!(plan.find("a[other]").unwrap().len(), 1);

    // A third recipe with one's definition of `a` shares its node.
    let third = "name = \"third\"\n[stages.a]\nkind = \"command\"\nargv = [\"true\"]\n";
    let plan = plan_of(&[
        ("one.toml", BASE),
        ("two.toml", other),
        ("three.toml", third),
    ])
    .unwrap();
    let ids: BTreeSet<&str> = plan.nodes.iter().map(|node| node.id.as_str()).collect();
    assert!(
        ids.contains("a[one,third]") && ids.contains("a[other]"),
        "{ids:?}"
    );
}

/// A file that extends another to change one value is a second experiment with its own name (its
/// file stem unless it sets `name`), not a clash with its base.
#[test]
fn an_extending_file_is_named_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("base.toml"),
        format!("name = \"base\"\n{BASE}"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("base-false.toml"),
        "extends = \"base.toml\"\n[stages.a]\nargv = [\"false\"]\n",
    )
    .unwrap();
    let mut recipes = Vec::new();
    for file in ["base.toml", "base-false.toml"] {
        recipes.extend(load(&dir.path().join(file), &LoadOptions::default(), &builtin()).unwrap());
    }
    assert_eq!(recipes[1].name, "base-false");
    let plan = Plan::build(recipes, &builtin()).unwrap();
    let ids: BTreeSet<&str> = plan.nodes.iter().map(|node| node.id.as_str()).collect();
    assert!(
        ids.contains("a[base]") && ids.contains("a[base-false]"),
        "{ids:?}"
    );
}

/// Two files that carry the same `name` cannot both name their stages: the error names both files.
#[test]
fn two_recipes_with_one_name_are_refused() {
    let same = "name = \"one\"\n[stages.a]\nkind = \"command\"\nargv = [\"false\"]\n";
    let error = plan_of(&[("one.toml", BASE), ("two.toml", same)]).unwrap_err();
    assert!(
        error.contains("two recipes of this run are named `one`")
            && error.contains("one.toml")
            && error.contains("two.toml")
            && error.contains("name = "),
        "{error}"
    );
}

#[test]
fn sweep_variants_get_distinct_ids_and_share_the_rest() {
    let sweep =
        format!("{BASE}[sweep]\n\"stages.b.argv\" = [[\"echo\", \"1\"], [\"echo\", \"2\"]]\n");
    let plan = plan_of(&[("s.toml", &sweep)]).unwrap();
    assert_eq!(plan.nodes.len(), 3);
    let ids: BTreeSet<&str> = plan.nodes.iter().map(|node| node.id.as_str()).collect();
    assert!(
        ids.contains("a") && ids.contains("b[argv=[echo,1]]"),
        "{ids:?}"
    );
    assert_eq!(plan.find("b").unwrap().len(), 2);
}

#[test]
fn cycles_are_named() {
    let text = "[stages.a]\nkind = \"command\"\nargv = [\"{inputs.x}\"]\ninputs = { x = { stage = \"c\" } }\n\
                [stages.b]\nkind = \"command\"\nargv = [\"{inputs.x}\"]\ninputs = { x = { stage = \"a\" } }\n\
                [stages.c]\nkind = \"command\"\nargv = [\"{inputs.x}\"]\ninputs = { x = { stage = \"b\" } }\n";
    let error = plan_of(&[("c.toml", text)]).unwrap_err();
    assert!(
        error.contains("a → b → c → a")
            || error.contains("b → c → a → b")
            || error.contains("c → a → b → c"),
        "{error}"
    );
}

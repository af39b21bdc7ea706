//! Where a step is in a definition: `2`, or `3.then.0` inside a condition's branch. A run's
//! cursor is the path of the next step to run.

use crate::model::{Step, StepKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seg {
    Index(usize),
    Then,
    Else,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Path(Vec<Seg>);

impl Path {
    pub fn root() -> Path {
        Path(Vec::new())
    }

    /// The `i`th step of the list this path names.
    pub fn child(&self, i: usize) -> Path {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    /// The `then` (or `else`) list of the condition at this path.
    pub fn branch(&self, then: bool) -> Path {
        let mut p = self.clone();
        p.0.push(if then { Seg::Then } else { Seg::Else });
        p
    }

    pub fn parse(s: &str) -> Option<Path> {
        let mut out = Vec::new();
        for part in s.split('.') {
            out.push(match part {
                "then" => Seg::Then,
                "else" => Seg::Else,
                n => Seg::Index(n.parse().ok()?),
            });
        }
        Some(Path(out))
    }

    /// `3.then.0`: how runs and step runs store it.
    pub fn display(&self) -> String {
        self.0
            .iter()
            .map(|s| match s {
                Seg::Index(i) => i.to_string(),
                Seg::Then => "then".into(),
                Seg::Else => "else".into(),
            })
            .collect::<Vec<_>>()
            .join(".")
    }

    /// `steps[3].then[0]`: where it is in the definition, for validation problems.
    pub fn display_in_def(&self) -> String {
        let mut out = String::from("steps");
        for s in &self.0 {
            match s {
                Seg::Index(i) => out.push_str(&format!("[{i}]")),
                Seg::Then => out.push_str(".then"),
                Seg::Else => out.push_str(".else"),
            }
        }
        out
    }

    fn list<'a>(prefix: &[Seg], steps: &'a [Step]) -> Option<&'a [Step]> {
        let mut list = steps;
        let mut i = 0;
        while i < prefix.len() {
            let Seg::Index(n) = prefix[i] else { return None };
            let branch = prefix.get(i + 1)?;
            let StepKind::Condition { then, otherwise, .. } = &list.get(n)?.kind else { return None };
            list = match branch {
                Seg::Then => then,
                Seg::Else => otherwise,
                Seg::Index(_) => return None,
            };
            i += 2;
        }
        Some(list)
    }

    pub fn step<'a>(&self, steps: &'a [Step]) -> Option<&'a Step> {
        let (Seg::Index(i), prefix) = self.0.split_last().map(|(l, p)| (*l, p))? else { return None };
        Self::list(prefix, steps)?.get(i)
    }

    /// The first step of a definition.
    pub fn first(steps: &[Step]) -> Option<Path> {
        (!steps.is_empty()).then(|| Path::root().child(0))
    }

    /// The step after this one, leaving branches at their end; `None` when the run is done.
    pub fn next(&self, steps: &[Step]) -> Option<Path> {
        let (Seg::Index(i), prefix) = self.0.split_last().map(|(l, p)| (*l, p))? else { return None };
        let list = Self::list(prefix, steps)?;
        if i + 1 < list.len() {
            let mut p = Path(prefix.to_vec());
            p.0.push(Seg::Index(i + 1));
            return Some(p);
        }
        // The end of a branch: go on after its condition.
        let (_, condition) = prefix.split_last()?;
        Path(condition.to_vec()).next(steps)
    }

    /// Into a condition's branch, or past the condition when that branch is empty.
    pub fn enter(&self, then: bool, steps: &[Step]) -> Option<Path> {
        let branch = self.branch(then);
        match Self::list(&branch.0, steps) {
            Some(list) if !list.is_empty() => Some(branch.child(0)),
            _ => self.next(steps),
        }
    }

    /// Visits every step, branches included, in definition order.
    pub fn walk<'a>(steps: &'a [Step], f: &mut dyn FnMut(&Path, &'a Step)) {
        fn go<'a>(steps: &'a [Step], at: &Path, f: &mut dyn FnMut(&Path, &'a Step)) {
            for (i, s) in steps.iter().enumerate() {
                let p = at.child(i);
                f(&p, s);
                if let StepKind::Condition { then, otherwise, .. } = &s.kind {
                    go(then, &p.branch(true), f);
                    go(otherwise, &p.branch(false), f);
                }
            }
        }
        go(steps, &Path::root(), f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn steps() -> Vec<Step> {
        let d = crate::validate::parse(json!({"name": "x", "steps": [
            {"type": "template", "template": "a"},
            {"type": "condition", "when": {"field": "a", "op": "eq", "value": 1},
             "then": [{"type": "template", "template": "b"}, {"type": "template", "template": "c"}],
             "else": []},
            {"type": "template", "template": "d"}
        ]}))
        .unwrap();
        d.steps
    }

    #[test]
    fn walks_through_branches_and_out() {
        let s = steps();
        let first = Path::first(&s).unwrap();
        assert_eq!(first.display(), "0");
        let cond = first.next(&s).unwrap();
        assert_eq!(cond.display(), "1");
        let then0 = cond.enter(true, &s).unwrap();
        assert_eq!(then0.display(), "1.then.0");
        let then1 = then0.next(&s).unwrap();
        assert_eq!(then1.display(), "1.then.1");
        assert_eq!(then1.next(&s).unwrap().display(), "2");
        // An empty else goes straight on.
        assert_eq!(cond.enter(false, &s).unwrap().display(), "2");
        assert_eq!(Path::parse("2").unwrap().next(&s), None);
        assert_eq!(Path::parse("1.then.1").unwrap(), then1);
        assert_eq!(then1.display_in_def(), "steps[1].then[1]");
        let StepKind::Template { template, .. } = &then1.step(&s).unwrap().kind else { panic!() };
        assert_eq!(template, "c");
        assert!(Path::parse("7").unwrap().step(&s).is_none());
        assert!(Path::parse("x.y").is_none());
    }
}

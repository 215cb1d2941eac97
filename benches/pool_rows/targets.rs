//! The targets of issue #16 (hand-off at the speed of memory), one row each: the figure, its
//! floor or peer measured in the same run, the ratio, the target and whether it is met.

/// One target row.
pub struct Target {
    name: String,
    figure: String,
    peer: String,
    ratio: String,
    target: String,
    met: Option<bool>,
}

impl Target {
    /// A row whose figure is compared with `peer`: `ratio` is figure / peer (or the quantity
    /// the target bounds), `met` whether the target holds.
    pub fn new(
        name: impl Into<String>,
        figure: impl Into<String>,
        peer: impl Into<String>,
        ratio: f64,
        target: impl Into<String>,
        met: bool,
    ) -> Target {
        Target {
            name: name.into(),
            figure: figure.into(),
            peer: peer.into(),
            ratio: format!("{ratio:.2}x"),
            target: target.into(),
            met: Some(met),
        }
    }

    /// A target this run could not measure, and why.
    pub fn unmeasured(name: impl Into<String>, target: impl Into<String>, why: &str) -> Target {
        Target {
            name: name.into(),
            figure: "-".into(),
            peer: why.into(),
            ratio: "-".into(),
            target: target.into(),
            met: None,
        }
    }
}

/// Prints the rows as a table.
pub fn print(rows: &[Target]) {
    println!();
    println!("issue #16 targets (figure | floor or peer, same run | ratio | target):");
    println!(
        "{:<44} {:>22}  {:<40} {:>7}  {:<12} verdict",
        "target row", "figure", "floor / peer", "ratio", "target"
    );
    for r in rows {
        let verdict = match r.met {
            Some(true) => "MET",
            Some(false) => "NOT MET",
            None => "NOT MEASURED",
        };
        println!(
            "{:<44} {:>22}  {:<40} {:>7}  {:<12} {verdict}",
            r.name, r.figure, r.peer, r.ratio, r.target
        );
    }
}

//! The pass: sums that do not depend on the thread count or on page release, and an error
//! that stops the pass with everything before it absorbed in order.

use crate::util::arch;
use ckpt_core::catalog::Grouping;
use ckpt_core::gram::{GramSpec, InnerProducts, gather};
use ckpt_core::pass::{Absorb, Item, NoProgress, Pass, PassError, Plan, Release, Slice, Visit};
use ckpt_ops::synth::{self, Layout, Synthetic};
use ckpt_read::Checkpoint;
use ckpt_read::dtype::FloatFormat;

fn two_models(dir: &tempfile::TempDir) -> (Checkpoint, Checkpoint) {
    let layout = Layout::new(arch("sd1"), 32, FloatFormat::BF16);
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    let base = Synthetic::base(arch("sd1"), 5);
    synth::write(&a, &layout, &base, &[], &NoProgress, &Default::default()).unwrap();
    synth::write(
        &b,
        &layout,
        &base.plus_delta(9, synth::uniform(arch("sd1"), 0.2)),
        &[],
        &NoProgress,
        &Default::default(),
    )
    .unwrap();
    (Checkpoint::open(&a).unwrap(), Checkpoint::open(&b).unwrap())
}

fn run(plan: &Plan<'_>, threads: usize, pass: Pass<'_>, center: Option<usize>) -> InnerProducts {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let all: Vec<usize> = (0..plan.entries().len()).collect();
    pool.install(|| {
        gather(
            plan,
            &Grouping::for_arch(arch("sd1")),
            &all,
            GramSpec {
                center,
                per_tensor: true,
                distances: true,
            },
            &pass,
        )
        .unwrap()
    })
}

#[test]
fn results_do_not_depend_on_threads_or_page_release() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_models(&dir);
    let plan = Plan::new(vec![&a, &b]);
    for center in [None, Some(0)] {
        // Small items and a short look-ahead make workers wait on each other.
        let pass = || {
            Pass::new(&NoProgress)
                .item_bytes(4096)
                .ahead_bytes(64 << 10)
        };
        let one = run(&plan, 1, pass(), center);
        for threads in [2, 3, 5] {
            assert_eq!(
                run(&plan, threads, pass(), center),
                one,
                "{threads} threads"
            );
        }
        assert_eq!(run(&plan, 2, pass().release(Release::Always), center), one);
    }
}

struct FailAt(usize);
impl Visit for FailAt {
    type Partial = usize;
    fn visit(
        &self,
        _: &Plan<'_>,
        item: &Item,
        _: &[Option<Slice<'_>>],
    ) -> Result<usize, PassError> {
        if item.entry == self.0 {
            return Err(PassError::Tensor {
                key: "x".into(),
                message: "planted".into(),
            });
        }
        Ok(item.entry)
    }
}
struct Collect(Vec<usize>);
impl Absorb<usize> for Collect {
    fn absorb(&mut self, _: &Plan<'_>, _: &Item, p: usize) -> Result<(), PassError> {
        self.0.push(p);
        Ok(())
    }
}

#[test]
fn an_error_stops_the_pass_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_models(&dir);
    let plan = Plan::new(vec![&a, &b]);
    let all: Vec<usize> = (0..plan.entries().len()).collect();
    let pass = Pass::new(&NoProgress).item_bytes(512).ahead_bytes(4096);
    let mut seen = Collect(Vec::new());
    let e = pass.run(&plan, &all, &FailAt(300), &mut seen).unwrap_err();
    assert!(matches!(e, PassError::Tensor { .. }));
    // Everything before the failing entry was absorbed, in order, and nothing after.
    let mut want: Vec<usize> = pass
        .items(&plan, &all)
        .iter()
        .map(|i| i.entry)
        .take_while(|&e| e != 300)
        .collect();
    want.dedup();
    seen.0.dedup();
    assert_eq!(seen.0, want);
}

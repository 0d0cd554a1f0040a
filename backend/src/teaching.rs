//! Fine-tuning inside the server: `borscht train`'s recipe as a [`FinetuneRun`] the model
//! workers advance between batches. A run is the run `borscht train --init PARENT --csv
//! DATA/food.csv --out DIR/vN [--resume]` with the admin's settings would make, step for
//! step.

use anyhow::Result;
use clap::Parser;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::cli::train::{train_options, TrainArgs};
use borscht_server::finetune::{FinetuneRun, RunProgress, RunSpec, RunStarter};
use borscht_server::versions::HeldOut;
use borscht_train::rudolph::{Advance, TrainingRun, Validation};

/// `borscht train`'s flags, parsed as the command parses them (so its defaults hold).
#[derive(Parser)]
struct TrainCommand {
    #[command(flatten)]
    args: TrainArgs,
}

/// The `borscht train` arguments of a run.
pub fn train_args(spec: &RunSpec) -> Result<TrainArgs> {
    let s = &spec.settings;
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let mut argv: Vec<String> = vec![
        "train".into(),
        "--csv".into(),
        path(&spec.csv),
        "--images".into(),
        path(&spec.images),
        "--out".into(),
        path(&spec.out),
        "--init".into(),
        path(&spec.parent),
        "--epochs".into(),
        s.epochs.to_string(),
        "--lr".into(),
        s.lr.to_string(),
        "--batch-size".into(),
        s.batch_size.to_string(),
        "--freeze".into(),
        s.freeze.clone(),
        "--val-fraction".into(),
        s.val_fraction.to_string(),
        "--seed".into(),
        s.seed.to_string(),
        // The server writes checkpoints itself, between batches.
        "--save-every".into(),
        "0".into(),
    ];
    if spec.resume {
        argv.push("--resume".into());
    }
    Ok(TrainCommand::try_parse_from(argv)?.args)
}

/// Starts runs on the worker's device.
pub fn starter() -> RunStarter {
    Arc::new(|spec: &RunSpec, engine: &borscht_pipelines::Engine| {
        let args = train_args(spec)?;
        let mut options = train_options(&args, Arc::new(AtomicBool::new(false)))?;
        options.show_progress = false;
        let run = TrainingRun::new(options, &engine.device)?;
        Ok(Box::new(ServerRun(run)) as Box<dyn FinetuneRun>)
    })
}

struct ServerRun(TrainingRun);

fn held_out(v: Validation) -> HeldOut {
    HeldOut { samples: v.samples, dish_accuracy: v.dish_accuracy, kcal_mae: v.kcal_mae }
}

impl FinetuneRun for ServerRun {
    fn advance(&mut self) -> Result<RunProgress> {
        Ok(match self.0.advance()? {
            Advance::Step(log) => RunProgress::Step { step: log.step, loss: log.loss },
            Advance::EpochEnd(validation) => RunProgress::EpochEnd(validation.map(held_out)),
            Advance::Finished => RunProgress::Finished,
        })
    }

    fn save(&mut self) -> Result<()> {
        self.0.save()
    }

    fn held_out(&self) -> Result<Option<HeldOut>> {
        Ok(self.0.validate_now()?.map(held_out))
    }

    fn step(&self) -> usize {
        self.0.state().step
    }

    fn total_steps(&self) -> usize {
        self.0.total_steps()
    }
}

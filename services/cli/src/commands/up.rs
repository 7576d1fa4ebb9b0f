//! `neuroshard up`: the whole swarm on this machine. Trains a checkpoint first when there is
//! none, then starts PostgreSQL, the registry, the shard workers and the gateway as separate
//! processes, prints where to reach them, restarts any that crashes (printing each exit and
//! restart), and stops everything on Ctrl-C or SIGTERM.
//!
//! With `--train`, the swarm's pipelines train while the gateway serves: the first stage of
//! each pipeline drives it over the data of `--data`. A checkpoint directory without weights
//! then gets the model's config and the dataset's tokenizer, and the workers start from the
//! seeded initialisation instead of a single-process run first.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use neuroshard_model::checkpoint;
use rand::Rng;

use neuroshard_local::{LocalSwarm, SwarmOptions, SwarmTraining, has_weights};

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Shard workers to start (two replicas of workers/2 pipeline stages).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Dataset directory (from `neuroshard data build`) to train on when there is no
    /// checkpoint yet.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Trained checkpoint to serve; trained from --data first when it does not exist.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Gateway HTTP port (API and dashboard).
    #[arg(long = "http-port", default_value_t = 8080)]
    pub http_port: u16,
    /// API key for /v1 (at least 16 characters); a random one is made and printed without it.
    #[arg(long = "api-key")]
    pub api_key: Option<String>,
    /// Training steps when a checkpoint has to be trained first.
    #[arg(long = "train-steps", default_value_t = 600)]
    pub train_steps: u64,
    /// Keys, generated configs and logs of the processes.
    #[arg(long = "state-dir", default_value = "runs/local")]
    pub state_dir: PathBuf,
    /// Plaintext gRPC between the processes instead of mutual TLS (a certificate per process
    /// under a CA made for the run, in <state-dir>/tls): anyone who can reach a port on this
    /// machine can then call the registry and the workers. For debugging with plaintext tools.
    #[arg(long = "insecure-plaintext")]
    pub insecure_plaintext: bool,
    /// Train in the swarm while it serves: every pipeline (two with 4 workers) trains on
    /// --data, its first stage driving it. Without trained weights in the checkpoint
    /// directory, training starts from the seeded initialisation.
    #[arg(long)]
    pub train: bool,
    /// Inner steps per round of the swarm's pipelines (with --train).
    #[arg(long = "inner-steps", default_value_t = 50, requires = "train")]
    pub inner_steps: u64,
    /// Run the NEURO ledger (with --train): the nodes' training rewards go to your wallet
    /// (<state-dir>/wallet.key) and inference is charged to it, so requests are refused
    /// (429 insufficient_quota) until the first round has paid.
    #[arg(long, requires = "train")]
    pub ledger: bool,
}

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    let bin_dir = std::env::current_exe()?
        .parent()
        .map(PathBuf::from)
        .context("locating the neuroshard binary's directory")?;
    let api_key = match &args.api_key {
        Some(key) => key.clone(),
        None => random_key(),
    };
    let mut options = SwarmOptions::new(PathBuf::new(), args.state_dir.clone(), bin_dir);
    options.workers = args.workers;
    options.http_port = args.http_port;
    options.api_key = api_key.clone();
    options.plaintext = args.insecure_plaintext;
    options.ledger = args.ledger;
    // Before any training or process: what the user can fix with a flag, said now.
    options.preflight()?;
    let checkpoint = if args.train {
        let data = args
            .data
            .clone()
            .context("--train needs --data DIR (a dataset from `neuroshard data build`)")?;
        if args.inner_steps == 0 {
            bail!("--inner-steps must be at least 1");
        }
        let checkpoint = seeded_checkpoint(&args, &data)?;
        // Absolute: the workers run from the state directory's logs, not from here.
        let data =
            std::fs::canonicalize(&data).with_context(|| format!("--data {}", data.display()))?;
        options.training = Some(SwarmTraining::local(data, args.inner_steps));
        checkpoint
    } else {
        resolve_checkpoint(&args)?
    };
    options.checkpoint = checkpoint.clone();
    if args.insecure_plaintext {
        eprintln!(
            "warning: --insecure-plaintext: gRPC between the swarm's processes is unencrypted and unauthenticated; any local user can call the registry and the workers"
        );
    }

    println!("==> starting the local swarm ({} workers)", args.workers);
    let swarm = LocalSwarm::start(&options, Duration::from_secs(180), |step| {
        println!("    {step}");
    })?;
    // Exits and restarts as they happen, e.g. "restarted worker-2 (exit: signal 9), restart 1".
    swarm.on_event(|event| println!("    {event}"));
    let base = format!("http://127.0.0.1:{}", swarm.gateway_port);
    println!();
    if has_weights(&checkpoint) {
        println!("NeuroShard is serving {}", checkpoint.display());
    } else {
        println!(
            "NeuroShard is serving the seeded model of {}",
            checkpoint.display()
        );
    }
    if let Some(training) = &options.training {
        println!(
            "  Training:   every pipeline, {} inner steps per round, on {} (loss per pipeline on the dashboard; training.pipelines in /api/v1/status)",
            training.inner_steps,
            training.data_dir.display()
        );
        if let Some(url) = &swarm.aggregator_url {
            println!(
                "  Aggregator: {url} ({} per layer; rounds, held-out loss and flags in training.rounds; `neuroshard model export --from {}/aggregator --out DIR` writes the global model)",
                training.rule,
                args.state_dir.display()
            );
        }
    }
    if let (Some(url), Some(wallet), Some(address)) =
        (&swarm.ledger_url, &swarm.wallet_key, &swarm.wallet_address)
    {
        let tls = &swarm.client_tls;
        let flags = match (&tls.cert_file, &tls.key_file, &tls.ca_file) {
            (Some(cert), Some(key), Some(ca)) => format!(
                " --tls-cert {} --tls-key {} --tls-ca {}",
                cert.display(),
                key.display(),
                ca.display()
            ),
            _ => String::new(),
        };
        println!(
            "  Ledger:     {url} (your wallet {address}: training pays it, inference charges it)"
        );
        println!(
            "              neuroshard wallet balance --key {} --ledger {url}{flags}",
            wallet.display()
        );
    }
    println!("  API:        {base}/v1   (OpenAI-compatible; model \"neurollm\")");
    println!("  Dashboard:  {base}/");
    println!("  API key:    {api_key}");
    println!("  Logs:       {}/logs/", args.state_dir.display());
    if args.insecure_plaintext {
        println!("  gRPC:       plaintext (--insecure-plaintext)");
    } else {
        println!(
            "  gRPC:       mutual TLS; CA and per-process certificates in {}/tls/",
            args.state_dir.display()
        );
    }
    println!(
        "  Processes:  {}/processes.json   (pids, restarts; a crashed process is restarted)",
        args.state_dir.display()
    );
    println!();
    println!("Try:");
    println!(
        "  curl -sN {base}/v1/completions -H 'Authorization: Bearer {api_key}' \\\n    -H 'Content-Type: application/json' \\\n    -d '{{\"model\":\"neurollm\",\"prompt\":\"ROMEO. \",\"max_tokens\":60,\"stream\":true}}'"
    );
    println!();
    println!("Ctrl-C stops everything.");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(neuroshard_runtime::shutdown::signal());
    println!("\n==> stopping");
    let restarted: Vec<String> = swarm
        .processes()
        .into_iter()
        .filter(|p| p.restarts > 0)
        .map(|p| format!("{} restarted {}×", p.name, p.restarts))
        .collect();
    swarm.stop();
    if !restarted.is_empty() {
        println!("while it ran: {}", restarted.join(", "));
    }
    println!("stopped; nothing left running");
    Ok(())
}

/// The checkpoint to serve: `--checkpoint` when it holds weights; otherwise train one from
/// `--data` into it (default `<data>/../checkpoint`).
fn resolve_checkpoint(args: &UpArgs) -> anyhow::Result<PathBuf> {
    // Servable as it is: weights, with the config and tokenizer beside them.
    let complete = |dir: &PathBuf| {
        has_weights(dir)
            && dir.join(checkpoint::CONFIG_FILE).exists()
            && dir.join(checkpoint::TOKENIZER_FILE).exists()
    };
    let target = match (&args.checkpoint, &args.data) {
        (Some(dir), _) if complete(dir) => return Ok(dir.clone()),
        (Some(dir), Some(_)) => dir.clone(),
        (None, Some(data)) => data
            .parent()
            .map(|p| p.join("checkpoint"))
            .unwrap_or_else(|| PathBuf::from("checkpoint")),
        (Some(dir), None) => bail!(
            "{} holds no trained checkpoint; pass --data DIR to train one first",
            dir.display()
        ),
        (None, None) => bail!(
            "nothing to serve: pass --checkpoint DIR (a trained checkpoint) or --data DIR (a dataset from `neuroshard data build`, trained first)"
        ),
    };
    if complete(&target) {
        return Ok(target);
    }
    let data = args.data.as_ref().context("--data is needed to train")?;
    println!(
        "==> no checkpoint in {}: training {} steps on {} first",
        target.display(),
        args.train_steps,
        data.display()
    );
    let cli = crate::Cli::try_parse_from_train(data, &target, args.train_steps)?;
    crate::run(cli)?;
    Ok(target)
}

/// The checkpoint directory `up --train` serves and trains: `--checkpoint` (default
/// `<data>/../checkpoint`). When it holds no weights, the workers initialise the model from
/// the seed, and it gets what the swarm needs beside weights, never replacing a file already
/// there: the default model's `config.json` for the dataset's vocabulary, and the dataset's
/// tokenizer. A config whose vocabulary is smaller than the dataset's, or a tokenizer other
/// than the one the dataset was cut with, is refused.
fn seeded_checkpoint(args: &UpArgs, data: &std::path::Path) -> anyhow::Result<PathBuf> {
    let dir = match &args.checkpoint {
        Some(dir) => dir.clone(),
        None => data
            .parent()
            .map(|p| p.join("checkpoint"))
            .unwrap_or_else(|| PathBuf::from("checkpoint")),
    };
    let manifest = neuroshard_model::data::Manifest::read(data)
        .with_context(|| format!("--data {}", data.display()))?;
    if has_weights(&dir) {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let config_file = dir.join(checkpoint::CONFIG_FILE);
    if config_file.exists() {
        let config = checkpoint::read_config(&dir)?;
        if config.vocab_size < i64::from(manifest.vocab_size) {
            bail!(
                "{} has a vocabulary of {}, the dataset {} one of {}",
                config_file.display(),
                config.vocab_size,
                data.display(),
                manifest.vocab_size
            );
        }
    } else {
        let config = crate::ModelShapeArgs::defaults()?.config(i64::from(manifest.vocab_size), 256);
        let eos = i64::from(manifest.eos_token_id);
        checkpoint::write_json(&config_file, &config.to_hf_json("float32", eos, eos))?;
    }
    let tokenizer_file = dir.join(checkpoint::TOKENIZER_FILE);
    if tokenizer_file.exists() {
        let sha =
            neuroshard_model::tokenizer::TextTokenizer::from_file(&tokenizer_file)?.sha256()?;
        if sha != manifest.tokenizer_sha256 {
            bail!(
                "{} is not the tokenizer the dataset {} was cut with (sha256 {sha}, the manifest pins {})",
                tokenizer_file.display(),
                data.display(),
                manifest.tokenizer_sha256
            );
        }
    } else {
        let tokenizer = data.join(checkpoint::TOKENIZER_FILE);
        std::fs::copy(&tokenizer, &tokenizer_file)
            .with_context(|| format!("copying the dataset's tokenizer {}", tokenizer.display()))?;
    }
    println!(
        "==> no weights in {}: the swarm starts from the seeded initialisation",
        dir.display()
    );
    Ok(dir)
}

/// 32 random alphanumeric characters after an `sk-local-` prefix.
fn random_key() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let body: String = (0..32)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("sk-local-{body}")
}

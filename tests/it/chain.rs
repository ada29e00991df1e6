//! A real EVM chain for the wallet-auth tests: anvil on a free port, OpenZeppelin 4.9.6
//! ERC-721 / ERC-1155 preset contracts deployed with `cast send --create`, and wallets that
//! sign with `cast wallet sign` (a real wallet implementation, not our verification code).
//!
//! The tools come from npm, installed by `.ci/test` into `target/ci-node`; a missing tool fails
//! the test with the exact install line.

use std::{path::PathBuf, process::Command, time::Duration};

use serde_json::Value;

use crate::harness::{free_port, poll_every, ChildProcess};

pub const CHAIN_ID: u64 = 31337;
const INSTALL: &str = "npm install --prefix target/ci-node @foundry-rs/anvil@1.7.1 @foundry-rs/cast@1.7.1 @openzeppelin/contracts@4.9.6";

fn node_dir() -> PathBuf {
    std::env::var_os("STREAMGATE_CI_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ci-node"))
}

/// A tool from the npm install; panics with the install line when it is missing. The native
/// binary is run directly: the npm shim would start it as a child that outlives a kill.
pub fn tool(name: &str) -> PathBuf {
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let path = node_dir()
        .join("node_modules/@foundry-rs")
        .join(format!("{name}-linux-{arch}/bin/{name}"));
    assert!(
        path.exists(),
        "{} is missing; run `bash .ci/test`, or from the repository root: {INSTALL}",
        path.display()
    );
    path
}

fn contract_bytecode(name: &str) -> String {
    let path = node_dir()
        .join("node_modules/@openzeppelin/contracts/build/contracts")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing; install with: {INSTALL}", path.display()));
    let artifact: Value = serde_json::from_str(&text).unwrap();
    artifact["bytecode"].as_str().unwrap().to_string()
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// An anvil dev account.
#[derive(Clone)]
pub struct Wallet {
    pub key: &'static str,
    pub address: &'static str,
}

/// ALICE and BOB are anvil's funded dev accounts #0 and #1; CAROL is an unfunded key (she
/// only receives tokens).
pub const ALICE: Wallet = Wallet {
    key: "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    address: "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
};
pub const BOB: Wallet = Wallet {
    key: "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    address: "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
};
pub const CAROL: Wallet = Wallet {
    key: "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9eb1744bbbb8c",
    address: "0x83931d56B8E787C83CA7551574E56CeB43CccA19",
};

impl Wallet {
    /// An EIP-191 personal-message signature over `message`, made by cast.
    pub fn sign(&self, message: &str) -> String {
        run(Command::new(tool("cast"))
            .args(["wallet", "sign", "--private-key", self.key])
            .arg(message))
    }
}

/// A running anvil; killed on drop.
pub struct Anvil {
    pub url: String,
    process: ChildProcess,
}

impl Anvil {
    pub async fn start() -> Self {
        let port = free_port();
        let process = ChildProcess::spawn(
            Command::new(tool("anvil")).args(["--host", "127.0.0.1", "--port", &port.to_string()]),
            INSTALL,
        );
        let url = format!("http://127.0.0.1:{port}");
        let client = crate::server::client_builder().build().unwrap();
        let chain_id =
            serde_json::json!({"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]});
        poll_every(
            Duration::from_millis(50),
            Duration::from_secs(30),
            "anvil to start",
            async || {
                let answer = client.post(&url).json(&chain_id).send().await;
                answer.is_ok_and(|r| r.status().is_success())
            },
        )
        .await;
        Self { url, process }
    }

    fn cast_send(&self, from: &Wallet, args: &[&str]) -> Value {
        let out = run(Command::new(tool("cast"))
            .args([
                "send",
                "--json",
                "--rpc-url",
                &self.url,
                "--private-key",
                from.key,
            ])
            .args(args));
        let receipt: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(receipt["status"], "0x1", "transaction failed: {receipt}");
        receipt
    }

    fn deploy(&self, from: &Wallet, name: &str, signature: &str, args: &[&str]) -> String {
        let code = contract_bytecode(name);
        let mut all = vec!["--create", code.as_str(), signature];
        all.extend_from_slice(args);
        let receipt = self.cast_send(from, &all);
        receipt["contractAddress"].as_str().unwrap().to_string()
    }

    /// ERC721PresetMinterPauserAutoId; `from` may mint. Token ids count from 0.
    pub fn deploy_erc721(&self, from: &Wallet) -> String {
        self.deploy(
            from,
            "ERC721PresetMinterPauserAutoId",
            "constructor(string,string,string)",
            &["Gate Pass", "PASS", "https://example.invalid/"],
        )
    }

    /// ERC1155PresetMinterPauser; `from` may mint.
    pub fn deploy_erc1155(&self, from: &Wallet) -> String {
        self.deploy(
            from,
            "ERC1155PresetMinterPauser",
            "constructor(string)",
            &["https://example.invalid/{id}.json"],
        )
    }

    pub fn mint_erc721(&self, minter: &Wallet, contract: &str, to: &str) {
        self.cast_send(minter, &[contract, "mint(address)", to]);
    }

    pub fn mint_erc1155(&self, minter: &Wallet, contract: &str, to: &str, id: u64, amount: u64) {
        self.cast_send(
            minter,
            &[
                contract,
                "mint(address,uint256,uint256,bytes)",
                to,
                &id.to_string(),
                &amount.to_string(),
                "0x",
            ],
        );
    }

    pub fn transfer_erc721(&self, from: &Wallet, contract: &str, to: &str, token_id: u64) {
        self.cast_send(
            from,
            &[
                contract,
                "transferFrom(address,address,uint256)",
                from.address,
                to,
                &token_id.to_string(),
            ],
        );
    }

    /// Stops the node, so the URL refuses connections.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// Points `config` at the test chain's node at `rpc`.
pub fn read_chain(config: &mut streamgate::config::Config, rpc: String) {
    // A loaded machine (parallel tests, transcodes) can starve anvil for seconds.
    config.auth.rpc_timeout_ms = 30_000;
    config.auth.rpc = vec![streamgate_actors::config::ChainRpc {
        chain_id: CHAIN_ID,
        url: rpc,
    }];
}

/// A URL on which nothing listens (a port we bound and released).
pub fn dead_rpc_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

//! Token ownership over JSON-RPC: ERC-721 `balanceOf`/`ownerOf` and ERC-1155 `balanceOf` as
//! `eth_call`s to the RPC URL configured for the chain, with a short-TTL cache in front.
//!
//! Invariant: an RPC failure (unreachable node, timeout, JSON-RPC error, undecodable answer) is
//! an error, never "does not own". The one chain answer we read as "owns nothing" is a revert of
//! ERC-721 `ownerOf`, which the standard specifies for tokens that do not exist.

use std::{
    collections::HashMap,
    num::NonZeroUsize,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use alloy_primitives::{Address, U256};
use alloy_sol_types::{sol, SolCall};
use prometheus::{HistogramVec, IntCounterVec};
use serde::Deserialize;

use super::AuthError;
use crate::clock::SharedClock;
use crate::model::TokenStandard;

sol! {
    interface IERC721 {
        function balanceOf(address owner) external view returns (uint256);
        function ownerOf(uint256 tokenId) external view returns (address);
    }
    interface IERC1155 {
        function balanceOf(address account, uint256 id) external view returns (uint256);
    }
}

/// One ownership question.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnershipQuery {
    pub chain_id: u64,
    pub contract: Address,
    pub standard: TokenStandard,
    pub token_id: Option<U256>,
    pub holder: Address,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holding {
    pub balance: U256,
    /// Answered from the cache rather than the chain.
    pub cached: bool,
    /// When this answer leaves the cache: nothing decided with it may outlive this.
    pub fresh_until: Instant,
}

/// Metric handles the checker bumps (names in `monitor/names.rs`).
#[derive(Clone)]
pub struct NftMetrics {
    /// `source` (cache|rpc) × `outcome` (ok|error).
    pub checks: IntCounterVec,
    /// RPC latency by `method`.
    pub rpc_duration: HistogramVec,
}

/// Cheap to clone; clones share the cache and the HTTP connection pool.
#[derive(Clone)]
pub struct NftChecker {
    client: reqwest::Client,
    rpc_urls: Arc<HashMap<u64, String>>,
    cache: Arc<Mutex<lru::LruCache<OwnershipQuery, (U256, Instant)>>>,
    ttl: Duration,
    metrics: NftMetrics,
    clock: SharedClock,
}

impl NftChecker {
    pub fn new(
        rpc_urls: HashMap<u64, String>,
        ttl: Duration,
        capacity: usize,
        client: reqwest::Client,
        metrics: NftMetrics,
        clock: SharedClock,
    ) -> Result<Self, AuthError> {
        let capacity = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        Ok(Self {
            client,
            rpc_urls: Arc::new(rpc_urls),
            cache: Arc::new(Mutex::new(lru::LruCache::new(capacity))),
            ttl,
            metrics,
            clock,
        })
    }

    pub fn knows_chain(&self, chain_id: u64) -> bool {
        self.rpc_urls.contains_key(&chain_id)
    }

    /// The holder's balance of the token (or, for ERC-721 without a token id, of the collection).
    pub async fn balance(&self, query: &OwnershipQuery) -> Result<Holding, AuthError> {
        if let Some((balance, fresh_until)) = self.cached(query) {
            self.metrics
                .checks
                .with_label_values(&["cache", "ok"])
                .inc();
            return Ok(Holding {
                balance,
                cached: true,
                fresh_until,
            });
        }
        let fetched = self.fetch(query).await;
        let outcome = if fetched.is_ok() { "ok" } else { "error" };
        self.metrics
            .checks
            .with_label_values(&["rpc", outcome])
            .inc();
        let balance = fetched?;
        let fetched_at = self.clock.instant();
        if let Ok(mut cache) = self.cache.lock() {
            cache.put(query.clone(), (balance, fetched_at));
        }
        Ok(Holding {
            balance,
            cached: false,
            fresh_until: fetched_at + self.ttl,
        })
    }

    /// Whether `query` would be answered from the cache (no RPC call) right now.
    pub fn is_cached(&self, query: &OwnershipQuery) -> bool {
        self.cached(query).is_some()
    }

    /// A cached balance still within its TTL, and when it stops being so.
    fn cached(&self, query: &OwnershipQuery) -> Option<(U256, Instant)> {
        let mut cache = self.cache.lock().ok()?;
        match cache.get(query) {
            Some((balance, at)) if self.clock.instant().duration_since(*at) < self.ttl => {
                Some((*balance, *at + self.ttl))
            }
            Some(_) => {
                cache.pop(query);
                None
            }
            None => None,
        }
    }

    async fn fetch(&self, query: &OwnershipQuery) -> Result<U256, AuthError> {
        let url = self
            .rpc_urls
            .get(&query.chain_id)
            .ok_or(AuthError::ChainNotConfigured(query.chain_id))?;
        match (query.standard, query.token_id) {
            (TokenStandard::Erc721, None) => {
                let call = IERC721::balanceOfCall {
                    owner: query.holder,
                };
                let data = self
                    .eth_call(url, query.contract, call.abi_encode(), "erc721_balance_of")
                    .await?
                    .ok_or(AuthError::RpcBadResponse("balanceOf reverted".into()))?;
                IERC721::balanceOfCall::abi_decode_returns(&data)
                    .map_err(|error| AuthError::RpcBadResponse(error.to_string()))
            }
            (TokenStandard::Erc721, Some(token_id)) => {
                let call = IERC721::ownerOfCall { tokenId: token_id };
                let Some(data) = self
                    .eth_call(url, query.contract, call.abi_encode(), "erc721_owner_of")
                    .await?
                else {
                    // ERC-721: ownerOf reverts for a token that does not exist.
                    return Ok(U256::ZERO);
                };
                let owner = IERC721::ownerOfCall::abi_decode_returns(&data)
                    .map_err(|error| AuthError::RpcBadResponse(error.to_string()))?;
                Ok(if owner == query.holder {
                    U256::from(1)
                } else {
                    U256::ZERO
                })
            }
            (TokenStandard::Erc1155, Some(token_id)) => {
                let call = IERC1155::balanceOfCall {
                    account: query.holder,
                    id: token_id,
                };
                let data = self
                    .eth_call(url, query.contract, call.abi_encode(), "erc1155_balance_of")
                    .await?
                    .ok_or(AuthError::RpcBadResponse("balanceOf reverted".into()))?;
                IERC1155::balanceOfCall::abi_decode_returns(&data)
                    .map_err(|error| AuthError::RpcBadResponse(error.to_string()))
            }
            (TokenStandard::Erc1155, None) => {
                Err(AuthError::InvalidQuery("erc1155 needs a token_id".into()))
            }
        }
    }

    /// One `eth_call` at the latest block. `Ok(None)` is a revert (the chain's answer);
    /// every other failure is an error.
    async fn eth_call(
        &self,
        url: &str,
        to: Address,
        data: Vec<u8>,
        method: &str,
    ) -> Result<Option<Vec<u8>>, AuthError> {
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "id": 1,
            "method": "eth_call",
            "params": [
                {"to": to.to_string(), "data": format!("0x{}", hex::encode(data))},
                "latest"
            ],
        });
        let started = Instant::now();
        let sent = self.client.post(url).json(&body).send().await;
        let answer = match sent {
            Ok(response) if response.status().is_success() => response
                .json::<RpcAnswer>()
                .await
                .map_err(|error| AuthError::RpcBadResponse(error.to_string())),
            Ok(response) => Err(AuthError::RpcUnavailable(format!(
                "RPC node answered HTTP {}",
                response.status()
            ))),
            Err(error) => Err(AuthError::RpcUnavailable(error.to_string())),
        };
        self.metrics
            .rpc_duration
            .with_label_values(&[method])
            .observe(started.elapsed().as_secs_f64());
        match answer? {
            RpcAnswer {
                result: Some(result),
                ..
            } => {
                let bytes = hex::decode(result.trim_start_matches("0x"))
                    .map_err(|error| AuthError::RpcBadResponse(error.to_string()))?;
                if bytes.is_empty() {
                    // No code at the address, or a contract without this function.
                    return Err(AuthError::NotATokenContract);
                }
                Ok(Some(bytes))
            }
            RpcAnswer {
                error: Some(error), ..
            } if is_revert(&error) => Ok(None),
            RpcAnswer {
                error: Some(error), ..
            } => Err(AuthError::RpcBadResponse(format!(
                "JSON-RPC error {}: {}",
                error.code, error.message
            ))),
            RpcAnswer { .. } => Err(AuthError::RpcBadResponse(
                "JSON-RPC answer has neither result nor error".into(),
            )),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RpcAnswer {
    result: Option<String>,
    error: Option<RpcError>,
}

#[derive(Debug, Deserialize)]
struct RpcError {
    code: i64,
    message: String,
}

/// Execution reverted: geth and anvil use code 3 (with revert data) or say so in the message.
fn is_revert(error: &RpcError) -> bool {
    error.code == 3 || error.message.to_ascii_lowercase().contains("revert")
}

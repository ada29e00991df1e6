//! Coherence between nodes sharing one record store: the store's change feed
//! ([`crate::store::Repo::follow_changes`]) tells this node of writes other nodes made, and this
//! module hands each to whoever keeps a copy here. Media records go to the `MetadataActor`
//! (caches, search index, visibility table), gates and revocations to the `AuthActor`, tus
//! upload records are dropped from the upload cache. A gap in the feed reloads all of them.

use std::sync::mpsc;

use actix::Addr;

use crate::{
    auth::{AuthActor, GateChangedElsewhere, ReloadAuthState, RevokedElsewhere},
    cache::Caches,
    metadata::{ChangedElsewhere, MetadataActor},
    store::{Change, SharedRepo, StoreError},
};

/// Changes heard since [`listen`], held until [`Feed::deliver`] knows where they go.
pub struct Feed {
    heard: mpsc::Receiver<Change>,
}

/// Starts listening before start-up loads anything from the store, so a change made while
/// the node loads is applied after the load, never lost between the two.
pub fn listen(repo: &SharedRepo) -> Result<Feed, StoreError> {
    let (tell, heard) = mpsc::channel();
    repo.follow_changes(std::sync::Arc::new(move |change| {
        // Fails only once the node is shutting down and nobody applies changes anymore.
        let _ = tell.send(change);
    }))?;
    Ok(Feed { heard })
}

impl Feed {
    /// Applies every change heard so far and from now on, on a thread of its own.
    pub fn deliver(
        self,
        caches: Caches,
        metadata: Addr<MetadataActor>,
        auth: Addr<AuthActor>,
    ) -> Result<(), StoreError> {
        let heard = self.heard;
        std::thread::Builder::new()
            .name("coherence".into())
            .spawn(move || {
                for change in heard {
                    apply(change, &caches, &metadata, &auth);
                }
            })
            .map(drop)
            .map_err(|e| StoreError::Backend(format!("cannot start the change feed: {e}")))
    }
}

fn apply(change: Change, caches: &Caches, metadata: &Addr<MetadataActor>, auth: &Addr<AuthActor>) {
    match change {
        Change::Media(media_id) => metadata.do_send(ChangedElsewhere {
            media_id: Some(media_id),
        }),
        Change::Gate(media_id) => auth.do_send(GateChangedElsewhere { media_id }),
        Change::Revoked {
            session_id,
            expires_at,
        } => auth.do_send(RevokedElsewhere {
            session_id,
            expires_at,
        }),
        Change::TusUpload(upload_id) => {
            caches.upload.remove(&upload_id);
        }
        Change::Resync => {
            caches.upload.clear();
            metadata.do_send(ChangedElsewhere { media_id: None });
            auth.do_send(ReloadAuthState);
        }
    }
}

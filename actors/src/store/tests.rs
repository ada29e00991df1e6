//! The repository test suite, run against every backend: each test is written once against
//! `&dyn Repo` and instantiated per backend by [`repo_suite!`].

use std::{collections::BTreeMap, sync::Arc};

use time::OffsetDateTime;

use super::{
    AuditFilter, JobFilter, MediaRepo, NonceUse, PostgresStore, Repo, SharedRepo, SledStore,
};
use crate::model::{
    AuditEntry, AuditId, CancelRequest, Gate, Job, JobId, JobKind, JobState, Media, MediaId,
    MediaState, NonceRecord, TokenStandard, TusMetadata, TusState, TusUpload, UploadId,
};

pub(crate) fn media() -> Media {
    let now = OffsetDateTime::now_utc();
    Media {
        id: MediaId::new(),
        title: "t".into(),
        description: String::new(),
        tags: vec![],
        owner: None,
        visibility: Default::default(),
        visibility_epoch: 0,
        captions: Vec::new(),
        state: MediaState::Processing,
        failure: None,
        failure_code: None,
        container: None,
        upload_id: UploadId::new(),
        filename: None,
        size: 1,
        sha256: String::new(),
        source_key: "k".into(),
        duration_s: None,
        width: None,
        height: None,
        video_codec: None,
        renditions: vec![],
        playable_at: None,
        created_at: now,
        updated_at: now,
    }
}

fn nonce(name: &str, expires_in: time::Duration) -> NonceRecord {
    let now = OffsetDateTime::now_utc();
    NonceRecord {
        nonce: name.into(),
        address: "0x0000000000000000000000000000000000000001".into(),
        chain_id: 1,
        issued_at: now,
        expires_at: now + expires_in,
        used: false,
    }
}

fn upload(owner: &str, length: Option<u64>, state: TusState) -> TusUpload {
    let now = OffsetDateTime::now_utc();
    TusUpload {
        id: UploadId::new(),
        owner: owner.into(),
        length,
        offset: 0,
        metadata: TusMetadata::default(),
        raw_metadata: None,
        state,
        container: None,
        media_id: None,
        sha256: None,
        created_at: now,
        expires_at: now,
        unverified_from: None,
    }
}

/// A repository under test and whatever keeps its storage alive.
pub(crate) struct Fixture {
    pub repo: SharedRepo,
    /// The scratch directory (the recount needs one for partial files; sled keeps its db there).
    pub dir: tempfile::TempDir,
}

pub(crate) fn sled() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let repo: SharedRepo = Arc::new(SledStore::open(&dir.path().join("db")).unwrap());
    Fixture { repo, dir }
}

pub(crate) fn postgres() -> Fixture {
    let url = super::test_postgres::fresh_database().unwrap();
    let repo: SharedRepo =
        Arc::new(PostgresStore::connect(&url, 4, std::time::Duration::from_secs(10)).unwrap());
    Fixture {
        repo,
        dir: tempfile::tempdir().unwrap(),
    }
}

pub(crate) fn list_pages_in_creation_order(fixture: Fixture) {
    let store = fixture.repo.as_ref();
    let all: Vec<Media> = (0..5).map(|_| media()).collect();
    for m in &all {
        store.put_media(m).unwrap();
    }
    let first = store.list_media(None, 2).unwrap();
    let rest = store.list_media(Some(&first[1].id), 10).unwrap();
    let ids: Vec<_> = first.iter().chain(&rest).map(|m| m.id.clone()).collect();
    assert_eq!(ids, all.iter().map(|m| m.id.clone()).collect::<Vec<_>>());
    // The newest first, through the caller's filter, across more than one batch.
    let mut many: Vec<Media> = (0..600).map(|_| media()).collect();
    for (n, m) in many.iter_mut().enumerate() {
        m.title = n.to_string();
        store.put_media(m).unwrap();
    }
    let even = store
        .recent_media(5, &|m: &Media| {
            m.title.parse::<u32>().is_ok_and(|n| n % 2 == 0)
        })
        .unwrap();
    let titles: Vec<_> = even.iter().map(|m| m.title.as_str()).collect();
    assert_eq!(titles, ["598", "596", "594", "592", "590"]);
    let early = store.recent_media(1, &|m: &Media| m.title == "3").unwrap();
    assert_eq!(early[0].id, many[3].id);
}

pub(crate) fn media_round_trips_and_is_deleted_once(fixture: Fixture) {
    let store = fixture.repo.as_ref();
    let mut stored = media();
    stored.tags = vec!["a".into(), "ü".into()];
    store.put_media(&stored).unwrap();
    assert_eq!(store.get_media(&stored.id).unwrap(), Some(stored.clone()));
    stored.title = "renamed".into();
    store.put_media(&stored).unwrap();
    assert_eq!(store.get_media(&stored.id).unwrap(), Some(stored.clone()));
    assert!(store.delete_media(&stored.id).unwrap());
    assert!(!store.delete_media(&stored.id).unwrap());
    assert_eq!(store.get_media(&stored.id).unwrap(), None);
    store.check().unwrap();
}

pub(crate) fn a_nonce_is_consumed_exactly_once_under_a_race(fixture: Fixture) {
    let store = fixture.repo.clone();
    let record = nonce("abcdefgh12345678", time::Duration::minutes(5));
    store.put_nonce(&record).unwrap();
    store.sync_nonces().unwrap();
    let outcomes: Vec<NonceUse> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                let nonce = record.nonce.clone();
                scope.spawn(move || store.consume_nonce(&nonce).unwrap())
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let consumed: Vec<_> = outcomes
        .iter()
        .filter(|o| matches!(o, NonceUse::Consumed(_)))
        .collect();
    assert_eq!(consumed, [&NonceUse::Consumed(record.clone())]);
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, NonceUse::AlreadyUsed(r) if r.used))
            .count(),
        7
    );
    assert_eq!(
        store.consume_nonce("never-issued").unwrap(),
        NonceUse::Unknown
    );
    let later = nonce("later-expiring-nonce", time::Duration::minutes(30));
    store.put_nonce(&later).unwrap();
    let now = OffsetDateTime::now_utc();
    assert_eq!(
        store
            .prune_nonces(now + time::Duration::minutes(6))
            .unwrap(),
        1
    );
    assert_eq!(
        store.consume_nonce(&record.nonce).unwrap(),
        NonceUse::Unknown
    );
    assert_eq!(
        store.consume_nonce(&later.nonce).unwrap(),
        NonceUse::Consumed(later)
    );
}

pub(crate) fn sessions_secret_and_gates_round_trip(fixture: Fixture) {
    let store = fixture.repo.as_ref();
    let now = OffsetDateTime::now_utc();
    store
        .put_revoked_session("s1", now + time::Duration::hours(1))
        .unwrap();
    store
        .put_revoked_session("s2", now - time::Duration::hours(1))
        .unwrap();
    let mut revoked = store.list_revoked_sessions().unwrap();
    revoked.sort();
    assert_eq!(revoked.len(), 2);
    assert_eq!(
        revoked[0],
        ("s1".to_string(), now + time::Duration::hours(1))
    );
    assert_eq!(store.prune_revoked_sessions(now).unwrap(), 1);
    assert_eq!(store.list_revoked_sessions().unwrap().len(), 1);

    assert_eq!(store.get_session_secret().unwrap(), None);
    // Racing first starts: every one gets the secret that was stored first.
    let secrets: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..4u8)
            .map(|n| scope.spawn(move || store.create_session_secret(&[n; 8]).unwrap()))
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert!(secrets.iter().all(|s| s == &secrets[0]), "{secrets:?}");
    assert_eq!(
        store.get_session_secret().unwrap(),
        Some(secrets[0].clone())
    );
    assert_eq!(store.create_session_secret(&[9; 8]).unwrap(), secrets[0]);
    store.put_session_secret(&[1, 2, 3, 0, 255]).unwrap();
    assert_eq!(
        store.get_session_secret().unwrap(),
        Some(vec![1, 2, 3, 0, 255])
    );

    let gated = MediaId::new();
    let gate = Gate {
        chain_id: 1,
        contract: "0x0000000000000000000000000000000000000002".into(),
        standard: TokenStandard::Erc1155,
        token_id: Some("7".into()),
        min_balance: 2,
        set_by: "admin".into(),
        set_at: now,
    };
    assert_eq!(store.get_gate(&gated).unwrap(), None);
    store.put_gate(&gated, &gate).unwrap();
    assert_eq!(store.get_gate(&gated).unwrap(), Some(gate.clone()));
    let gates = store.list_gates().unwrap();
    assert_eq!(gates.len(), 1);
    assert_eq!(gates[0].0, gated);
    assert_eq!(gates[0].1.token_id.as_deref(), Some("7"));
    assert!(store.delete_gate(&gated).unwrap());
    assert!(!store.delete_gate(&gated).unwrap());
    assert!(store.list_gates().unwrap().is_empty());
}

pub(crate) fn tus_uploads_round_trip_and_page(fixture: Fixture) {
    let store = fixture.repo.as_ref();
    let all: Vec<TusUpload> = (0..3)
        .map(|_| upload("0xabc", Some(10), TusState::Receiving))
        .collect();
    for record in &all {
        store.put_tus_upload(record).unwrap();
    }
    let mut moved = all[1].clone();
    moved.offset = 5;
    store.put_tus_upload(&moved).unwrap();
    assert_eq!(
        store.get_tus_upload(&moved.id).unwrap(),
        Some(moved.clone())
    );
    let page = store.list_tus_uploads(Some(&all[0].id), 10).unwrap();
    assert_eq!(page, [moved.clone(), all[2].clone()]);
    assert!(store.delete_tus_upload(&moved.id).unwrap());
    assert!(!store.delete_tus_upload(&moved.id).unwrap());
    assert_eq!(store.list_tus_uploads(None, 10).unwrap().len(), 2);
}

pub(crate) fn audit_filters_pages_and_prunes(fixture: Fixture) {
    let store = fixture.repo.as_ref();
    let start = OffsetDateTime::now_utc();
    let entry = |n: i64, action: &str| AuditEntry {
        id: AuditId::new(),
        at: start + time::Duration::seconds(n),
        action: action.into(),
        actor: if n % 2 == 0 { "admin" } else { "0xabc" }.into(),
        target: None,
        outcome: "ok".into(),
        detail: Some(n.to_string()),
    };
    let entries: Vec<AuditEntry> = (0..6)
        .map(|n| entry(n, if n < 3 { "upload.finish" } else { "auth.login" }))
        .collect();
    store.append_audit(&entries[0]).unwrap();
    store.append_audit_batch(&entries[1..]).unwrap();
    let all = AuditFilter {
        limit: 100,
        ..AuditFilter::default()
    };
    assert_eq!(store.list_audit(&all).unwrap(), entries);
    let logins = AuditFilter {
        action: Some("auth.login".into()),
        ..all.clone()
    };
    assert_eq!(store.list_audit(&logins).unwrap(), entries[3..]);
    let by_admin_since = AuditFilter {
        actor: Some("admin".into()),
        since: Some(entries[2].at),
        ..all.clone()
    };
    assert_eq!(
        store.list_audit(&by_admin_since).unwrap(),
        [entries[2].clone(), entries[4].clone()]
    );
    let page = AuditFilter {
        after: Some(entries[3].id.clone()),
        limit: 1,
        ..AuditFilter::default()
    };
    assert_eq!(store.list_audit(&page).unwrap(), [entries[4].clone()]);
    // Two are older than the cut-off, then one more beyond the cap of three.
    assert_eq!(store.prune_audit(entries[2].at, 3).unwrap(), 3);
    assert_eq!(store.list_audit(&all).unwrap(), entries[3..]);
}

pub(crate) fn concurrent_reservations_never_overshoot_the_quota_and_deleting_media_frees_its_bytes(
    fixture: Fixture,
) {
    let store = fixture.repo.clone();
    let (quota, each) = (1_000_000, 300_000);
    let granted: Vec<Option<u64>> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                scope.spawn(move || store.reserve_quota("0xabc", each, each, quota).unwrap())
            })
            .collect();
        racers
            .into_iter()
            .map(|racer| racer.join().unwrap())
            .collect()
    });
    // Three of 300,000 fit in 1,000,000; the other five are refused, whatever the order.
    assert_eq!(granted.iter().filter(|g| **g == Some(each)).count(), 3);
    assert_eq!(granted.iter().filter(|g| g.is_none()).count(), 5);
    assert_eq!(store.quota_used("0xabc").unwrap(), 900_000);
    // A growing reservation takes what is left, up to its maximum.
    assert_eq!(
        store.reserve_quota("0xabc", 1, 500_000, quota).unwrap(),
        Some(100_000)
    );
    store.release_quota("0xabc", 400_000).unwrap();
    assert_eq!(store.quota_used("0xabc").unwrap(), 600_000);

    let mut owned = media();
    owned.owner = Some("0xabc".into());
    owned.size = 250_000;
    store.put_media(&owned).unwrap();
    assert!(store.delete_media(&owned.id).unwrap());
    assert_eq!(store.quota_used("0xabc").unwrap(), 350_000);
    assert!(!store.delete_media(&owned.id).unwrap());
    assert_eq!(store.quota_used("0xabc").unwrap(), 350_000);

    let usage = BTreeMap::from([("admin".to_string(), 7)]);
    store.reset_quota_usage(&usage).unwrap();
    assert_eq!(store.quota_used("0xabc").unwrap(), 0);
    assert_eq!(store.quota_used("admin").unwrap(), 7);
}

pub(crate) fn the_start_up_recount_drops_leaked_reservations_and_counts_what_is_held(
    fixture: Fixture,
) {
    let store = fixture.repo.as_ref();
    let partials = fixture.dir.path().join("partials");
    std::fs::create_dir_all(&partials).unwrap();
    let mut owned = media();
    owned.owner = Some("0xabc".into());
    owned.size = 1000;
    store.put_media(&owned).unwrap();
    let known = upload("0xabc", Some(200), TusState::Receiving);
    let deferred = upload("0xabc", None, TusState::Receiving);
    std::fs::write(
        crate::upload::tus::partial_path(&partials, &deferred.id),
        [0u8; 30],
    )
    .unwrap();
    let finished = upload("0xabc", Some(1000), TusState::Finished);
    for record in [&known, &deferred, &finished] {
        store.put_tus_upload(record).unwrap();
    }
    // A reservation a crash left behind, and an owner with nothing at all.
    store.reserve_quota("0xabc", 5000, 5000, 10_000).unwrap();
    store.reserve_quota("0xdef", 70, 70, 10_000).unwrap();
    crate::upload::quota::recount(store, &partials).unwrap();
    assert_eq!(store.quota_used("0xabc").unwrap(), 1000 + 200 + 30);
    assert_eq!(store.quota_used("0xdef").unwrap(), 0);
}

pub(crate) fn jobs_filter_by_state_media_owner_and_page(fixture: Fixture) {
    let store = fixture.repo.as_ref();
    let media_id = MediaId::new();
    let mut ids = Vec::new();
    for (state, media, owner) in [
        (JobState::Queued, Some(media_id.clone()), Some("0xabc")),
        (JobState::Running, Some(media_id.clone()), None),
        (JobState::Queued, None, None),
    ] {
        let job = Job {
            media_id: media,
            state,
            owner: owner.map(String::from),
            ..queued_job(5)
        };
        store.put_job(&job).unwrap();
        assert_eq!(store.get_job(&job.id).unwrap(), Some(job.clone()));
        ids.push(job.id);
    }
    let count = |filter: JobFilter| store.list_jobs(&filter).unwrap().len();
    assert_eq!(count(JobFilter::all_in(JobState::Queued)), 2);
    let all = JobFilter {
        limit: 10,
        ..JobFilter::default()
    };
    assert_eq!(count(all.clone()), 3);
    let of_media = JobFilter {
        media_id: Some(media_id),
        ..all.clone()
    };
    assert_eq!(count(of_media.clone()), 2);
    assert_eq!(
        count(JobFilter {
            state: Some(JobState::Running),
            ..of_media
        }),
        1
    );
    assert_eq!(
        count(JobFilter {
            owner: Some("0xabc".into()),
            ..all.clone()
        }),
        1
    );
    let after_first = store
        .list_jobs(&JobFilter {
            after: Some(ids[0].clone()),
            limit: 1,
            ..JobFilter::default()
        })
        .unwrap();
    assert_eq!(after_first.len(), 1);
    assert_eq!(after_first[0].id, ids[1]);
    // A state change moves the job between filters.
    let mut running = store.get_job(&ids[2]).unwrap().unwrap();
    running.state = JobState::Running;
    store.put_job(&running).unwrap();
    assert_eq!(count(JobFilter::all_in(JobState::Queued)), 1);
}

/// A fresh transcode job for a new media id, queued at `priority`.
fn queued_job(priority: u8) -> Job {
    let now = OffsetDateTime::now_utc();
    Job {
        id: JobId::new(),
        kind: JobKind::Transcode,
        media_id: Some(MediaId::new()),
        profiles: vec![],
        state: JobState::Queued,
        priority,
        attempts: 0,
        last_error: None,
        error_code: None,
        owner: None,
        progress: 0,
        summary: None,
        run_at: None,
        started_at: None,
        finished_at: None,
        trace_id: None,
        created_at: now,
        updated_at: now,
        lease: None,
    }
}

pub(crate) fn concurrent_claimers_never_get_the_same_job(fixture: Fixture) {
    let store = fixture.repo.as_ref();
    let jobs: Vec<Job> = (0..24).map(|_| queued_job(5)).collect();
    for job in &jobs {
        store.put_job(job).unwrap();
    }
    assert_eq!(store.count_jobs(JobState::Queued).unwrap(), 24);
    let claimed: Vec<(String, Job)> = std::thread::scope(|scope| {
        let claimers: Vec<_> = (0..4)
            .map(|n| {
                let repo = fixture.repo.clone();
                scope.spawn(move || {
                    let node = format!("node-{n}");
                    let mut mine = Vec::new();
                    loop {
                        let now = OffsetDateTime::now_utc();
                        let until = now + time::Duration::minutes(5);
                        match repo.claim_job(&node, now, until).unwrap() {
                            Some(job) => mine.push((node.clone(), job)),
                            None => return mine,
                        }
                    }
                })
            })
            .collect();
        claimers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    let mut ids: Vec<JobId> = claimed.iter().map(|(_, job)| job.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        jobs.len(),
        "a job was claimed twice or not at all"
    );
    assert_eq!(claimed.len(), jobs.len());
    assert_eq!(store.count_jobs(JobState::Queued).unwrap(), 0);
    assert_eq!(store.count_jobs(JobState::Running).unwrap(), 24);
    for (node, job) in &claimed {
        let stored = store.get_job(&job.id).unwrap().unwrap();
        assert_eq!(stored.state, JobState::Running);
        assert_eq!(stored.attempts, 1);
        assert_eq!(
            stored.lease.as_ref().map(|l| l.node.as_str()),
            Some(node.as_str())
        );
    }
}

pub(crate) fn claims_follow_priority_and_run_at_and_take_over_lapsed_leases(fixture: Fixture) {
    let store = fixture.repo.as_ref();
    let now = OffsetDateTime::now_utc();
    let later = now + time::Duration::seconds(60);
    let low = queued_job(2);
    let high = queued_job(9);
    let mut scheduled = queued_job(9);
    scheduled.run_at = Some(later);
    for job in [&low, &high, &scheduled] {
        store.put_job(job).unwrap();
    }
    let claim = |node: &str, at: OffsetDateTime| {
        store
            .claim_job(node, at, at + time::Duration::seconds(3))
            .unwrap()
    };
    assert_eq!(claim("a", now).unwrap().id, high.id);
    let taken = claim("a", now).unwrap();
    assert_eq!(taken.id, low.id);
    assert_eq!(
        claim("b", now),
        None,
        "held leases and future run_at are not claimable"
    );

    // Node a stops renewing: once its leases lapsed node b takes the jobs over, and a has
    // lost them (no renewal, no outcome written).
    let lapsed = now + time::Duration::seconds(10);
    let first = claim("b", lapsed).unwrap();
    assert_eq!(first.id, high.id);
    assert_eq!(first.attempts, 2);
    assert!(first.last_error.is_some());
    assert_eq!(claim("b", lapsed).unwrap().id, low.id);
    assert_eq!(claim("b", lapsed), None);
    assert_eq!(
        store
            .renew_leases("a", std::slice::from_ref(&low.id), lapsed)
            .unwrap(),
        vec![]
    );
    let mut outcome = store.get_job(&low.id).unwrap().unwrap();
    outcome.state = JobState::Succeeded;
    assert!(!store.finish_leased("a", &outcome).unwrap());
    assert_eq!(
        store.get_job(&low.id).unwrap().unwrap().state,
        JobState::Running
    );
    // Its run_at come, the scheduled job is claimable too (b keeps its leases renewed).
    let held = vec![high.id.clone(), low.id.clone()];
    let renewed = store
        .renew_leases("b", &held, later + time::Duration::seconds(60))
        .unwrap();
    assert_eq!(
        renewed,
        held.into_iter().map(|id| (id, None)).collect::<Vec<_>>()
    );
    assert_eq!(claim("b", later).unwrap().id, scheduled.id);
}

pub(crate) fn leases_renew_for_their_holder_and_carry_a_cancel_request(fixture: Fixture) {
    let store = fixture.repo.as_ref();
    let now = OffsetDateTime::now_utc();
    let job = queued_job(5);
    let queued = queued_job(5);
    store.put_job(&job).unwrap();
    let claimed = store
        .claim_job("a", now, now + time::Duration::seconds(3))
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, job.id);
    store.put_job(&queued).unwrap();
    let until = now + time::Duration::seconds(30);
    assert_eq!(
        store
            .renew_leases("b", std::slice::from_ref(&job.id), until)
            .unwrap(),
        vec![]
    );
    assert_eq!(
        store
            .renew_leases("a", std::slice::from_ref(&job.id), until)
            .unwrap(),
        vec![(job.id.clone(), None)]
    );
    let lease = store.get_job(&job.id).unwrap().unwrap().lease.unwrap();
    assert_eq!((lease.node.as_str(), lease.until), ("a", until));
    // Renewed, the lease no longer lapses where it first would have.
    assert_eq!(
        store
            .claim_job("b", now + time::Duration::seconds(10), until)
            .unwrap()
            .map(|j| j.id),
        Some(queued.id.clone())
    );

    // A cancel of a running job waits on its lease for the holder's next renewal.
    let asked = store.request_cancel(&job.id, "admin", now).unwrap();
    assert!(matches!(asked, CancelRequest::Requested(_)), "{asked:?}");
    assert_eq!(
        store
            .renew_leases("a", std::slice::from_ref(&job.id), until)
            .unwrap(),
        vec![(job.id.clone(), Some("admin".to_string()))]
    );
    let mut ended = store.get_job(&job.id).unwrap().unwrap();
    ended.state = JobState::Cancelled;
    assert!(!store.finish_leased("b", &ended).unwrap());
    assert!(store.finish_leased("a", &ended).unwrap());
    let stored = store.get_job(&job.id).unwrap().unwrap();
    assert_eq!((stored.state, stored.lease), (JobState::Cancelled, None));
    assert!(matches!(
        store.request_cancel(&job.id, "admin", now).unwrap(),
        CancelRequest::Final(_)
    ));

    // A queued job is cancelled on the spot and never claimed.
    let waiting = queued_job(5);
    store.put_job(&waiting).unwrap();
    let answer = store.request_cancel(&waiting.id, "admin", now).unwrap();
    let CancelRequest::Cancelled(cancelled) = answer else {
        panic!("{answer:?}");
    };
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(store.get_job(&waiting.id).unwrap(), Some(cancelled));
    assert_eq!(store.claim_job("b", now, until).unwrap(), None);
    assert_eq!(
        store.request_cancel(&JobId::new(), "admin", now).unwrap(),
        CancelRequest::Unknown
    );
}

/// Instantiates every suite test for one backend.
macro_rules! repo_suite {
    ($backend:ident) => {
        mod $backend {
            repo_suite!(@tests $backend,
                list_pages_in_creation_order,
                media_round_trips_and_is_deleted_once,
                a_nonce_is_consumed_exactly_once_under_a_race,
                sessions_secret_and_gates_round_trip,
                tus_uploads_round_trip_and_page,
                audit_filters_pages_and_prunes,
                concurrent_reservations_never_overshoot_the_quota_and_deleting_media_frees_its_bytes,
                the_start_up_recount_drops_leaked_reservations_and_counts_what_is_held,
                jobs_filter_by_state_media_owner_and_page,
                concurrent_claimers_never_get_the_same_job,
                claims_follow_priority_and_run_at_and_take_over_lapsed_leases,
                leases_renew_for_their_holder_and_carry_a_cancel_request,
            );
        }
    };
    (@tests $backend:ident, $($name:ident,)*) => {
        $(
            #[test]
            fn $name() {
                super::$name(super::$backend());
            }
        )*
    };
}

repo_suite!(sled);
repo_suite!(postgres);

/// Postgres only: the schema migration is idempotent and concurrent node starts agree.
#[test]
fn postgres_connects_again_to_a_migrated_database_and_keeps_its_records() {
    let url = super::test_postgres::fresh_database().unwrap();
    let record = media();
    let stores: Vec<PostgresStore> = std::thread::scope(|scope| {
        let starts: Vec<_> = (0..3)
            .map(|_| {
                let url = url.clone();
                scope.spawn(move || {
                    PostgresStore::connect(&url, 1, std::time::Duration::from_secs(10)).unwrap()
                })
            })
            .collect();
        starts.into_iter().map(|s| s.join().unwrap()).collect()
    });
    stores[0].put_media(&record).unwrap();
    drop(stores);
    let again = PostgresStore::connect(&url, 1, std::time::Duration::from_secs(10)).unwrap();
    assert_eq!(again.get_media(&record.id).unwrap(), Some(record));
    assert_eq!(again.backend_name(), "postgres");
}

#[test]
fn postgres_that_is_unreachable_fails_to_connect_with_a_store_error() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "postgresql:///nothing?user=postgres&host={}",
        dir.path().display()
    );
    let result = PostgresStore::connect(&url, 1, std::time::Duration::from_millis(300));
    assert!(matches!(result, Err(super::StoreError::Backend(_))));
}

/// Postgres only: a write one store makes is heard by another store on the same database (a
/// second node), with what changed; the writer does not hear its own writes.
#[test]
fn postgres_changes_reach_the_other_nodes_listener_and_not_the_writer() {
    let url = super::test_postgres::fresh_database().unwrap();
    let connect = || -> SharedRepo {
        Arc::new(PostgresStore::connect(&url, 2, std::time::Duration::from_secs(10)).unwrap())
    };
    let (writer, reader) = (connect(), connect());
    let hear = |repo: &SharedRepo| {
        let (tell, heard) = std::sync::mpsc::channel();
        repo.follow_changes(Arc::new(move |change| {
            let _ = tell.send(change);
        }))
        .unwrap();
        heard
    };
    let (own, other) = (hear(&writer), hear(&reader));
    let record = media();
    writer.put_media(&record).unwrap();
    writer
        .put_revoked_session(
            "gone",
            OffsetDateTime::UNIX_EPOCH + time::Duration::hours(1),
        )
        .unwrap();
    assert!(writer.delete_media(&record.id).unwrap());
    let within = std::time::Duration::from_secs(5);
    assert_eq!(
        other.recv_timeout(within).unwrap(),
        super::Change::Media(record.id.clone())
    );
    assert_eq!(
        other.recv_timeout(within).unwrap(),
        super::Change::Revoked {
            session_id: "gone".into(),
            expires_at: OffsetDateTime::UNIX_EPOCH + time::Duration::hours(1),
        }
    );
    assert_eq!(
        other.recv_timeout(within).unwrap(),
        super::Change::Media(record.id)
    );
    // A delete of nothing changes nothing, and says nothing.
    assert!(!writer.delete_gate(&MediaId::new()).unwrap());
    assert!(own.try_recv().is_err(), "the writer heard itself");
    assert!(other
        .recv_timeout(std::time::Duration::from_millis(300))
        .is_err());
}

/// Postgres only: the listener survives a database restart and says it may have missed
/// changes (`Resync`), then hears changes again.
#[test]
fn postgres_listener_reconnects_after_a_restart_and_asks_for_a_resync() {
    let server = super::test_postgres::TestPostgres::start_own().unwrap();
    let url = server.fresh_database().unwrap();
    let connect = || -> SharedRepo {
        Arc::new(PostgresStore::connect(&url, 2, std::time::Duration::from_secs(2)).unwrap())
    };
    let (writer, reader) = (connect(), connect());
    let (tell, heard) = std::sync::mpsc::channel();
    reader
        .follow_changes(Arc::new(move |change| {
            let _ = tell.send(change);
        }))
        .unwrap();
    server.stop().unwrap();
    server.start_again().unwrap();
    let within = std::time::Duration::from_secs(20);
    assert_eq!(heard.recv_timeout(within).unwrap(), super::Change::Resync);
    // The writer's pool replaces its broken connections on its own.
    let record = media();
    let deadline = std::time::Instant::now() + within;
    while writer.put_media(&record).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the pool did not recover"
        );
    }
    assert_eq!(
        heard.recv_timeout(within).unwrap(),
        super::Change::Media(record.id)
    );
}

-- The change log: every change to a token a replica may have cached gets a position, so
-- every replica can poll "changes after position N" (design.md section 7). NOTIFY stays the
-- fast path; this log is what makes a lost notice harmless.
create table token_changes (
    position   bigint      generated always as identity primary key,
    token_id   uuid        not null,
    lookup_id  text        not null,
    kind       text        not null,
    changed_at timestamptz not null default now(),
    constraint token_changes_kind check (kind in ('revoke', 'update', 'delete'))
);

comment on table token_changes is 'Change log of api_tokens: replicas poll it by position to refresh or drop cached tokens';
comment on column token_changes.position is 'Monotonic position; positions commit in order (see api_tokens_log_change)';
comment on column token_changes.token_id is 'The changed token';
comment on column token_changes.lookup_id is 'The changed token''s lookup id (how replica caches find it)';
comment on column token_changes.kind is 'revoke, update (a field a cache may hold, or the hash) or delete';
comment on column token_changes.changed_at is 'When the change was written';

-- Written by a trigger, so a change made by hand in SQL is logged like one made by the
-- service.
--
-- Commit order vs position order: an identity value is taken when the row is inserted,
-- but becomes visible only at commit. Two concurrent changes could take positions 5 and 6
-- and commit 6 first; a poller that read "position > 4" then saw 6, moved its mark to 6 and
-- would never read 5. The transaction-scoped advisory lock below serialises writers of the
-- log: a second writer waits until the first has committed (Postgres makes a commit
-- visible before it releases the transaction's locks), and only then takes its position.
-- So positions become visible in order and "position > N" misses nothing. The price is that
-- token changes (revocations, updates: rare, operator-speed) are serialised cluster-wide;
-- the hot path never writes here. A long-open transaction that changed a token delays the
-- next change until it ends, as its row lock would anyway for that token.
create function api_tokens_log_change() returns trigger language plpgsql as $$
declare
    change_kind text;
begin
    if tg_op = 'DELETE' then
        change_kind := 'delete';
    elsif new.revoked_at is distinct from old.revoked_at then
        change_kind := 'revoke';
    elsif new.scopes is distinct from old.scopes
        or new.expires_at is distinct from old.expires_at
        or new.org_id is distinct from old.org_id
        or new.user_id is distinct from old.user_id
        or new.lookup_id is distinct from old.lookup_id
        or new.secret_hash is distinct from old.secret_hash
        or new.name is distinct from old.name
        or new.description is distinct from old.description then
        change_kind := 'update';
    else
        -- A column in the SET list but unchanged.
        return null;
    end if;
    perform pg_advisory_xact_lock(7161960557425491045);
    insert into token_changes (token_id, lookup_id, kind)
        values (old.id, old.lookup_id, change_kind);
    return null;
end
$$;

-- Not fired by the last-used write-behind (it sets only last_used_at, nothing a cache holds,
-- in batches of up to 100k rows every few seconds).
create trigger api_tokens_log_change
    after update of lookup_id, secret_hash, name, description, scopes, org_id, user_id,
        expires_at, revoked_at
    or delete on api_tokens
    for each row execute function api_tokens_log_change();

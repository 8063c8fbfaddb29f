-- The audit trail: one row per lifecycle event of a token, written in the same transaction
-- as the change it describes (or, for first use and expiry, by the statement that notices
-- it). Append-only: a trigger refuses UPDATE and DELETE. Never a secret, never a full
-- token: the detail holds field names, scopes and times, not client-supplied text.
create table token_events (
    id          bigint      generated always as identity primary key,
    token_id    uuid        not null,
    org_id      text        not null,
    user_id     text        not null,
    kind        text        not null,
    at          timestamptz not null,
    actor       text        not null,
    request_id  text,
    source_addr text,
    detail      jsonb       not null default '{}',
    constraint token_events_kind check (kind in (
        'created', 'updated', 'rotated', 'revoked', 'first_used', 'expired', 'exposed',
        'offboarded'
    )),
    constraint token_events_request_id_length check (char_length(request_id) <= 128),
    constraint token_events_source_addr_length check (char_length(source_addr) <= 64)
);

comment on table token_events is 'Audit trail of api_tokens: append-only, one row per lifecycle event, never a secret';
comment on column token_events.id is 'Monotonic event id; the order of events of one token (listings page by it)';
comment on column token_events.token_id is 'The token the event is about (no foreign key: the trail outlives a deleted row)';
comment on column token_events.org_id is 'The token''s organisation at the time (listings by organisation)';
comment on column token_events.user_id is 'The token''s user at the time';
comment on column token_events.kind is 'created, updated, rotated, revoked, first_used, expired, exposed or offboarded';
comment on column token_events.at is 'When it happened (for expired: the expiry instant itself)';
comment on column token_events.actor is 'Who: token:<id> (the token''s owner or a service), admin:<id> (an organisation admin''s token), cli, system, or anonymous';
comment on column token_events.request_id is 'x-request-id of the call, or its trace id; null when none';
comment on column token_events.source_addr is 'Peer address of the call where known';
comment on column token_events.detail is 'Kind-specific facts (changed field names, scopes, times); never client-supplied free text';

create index token_events_token_idx on token_events (token_id, id);
create index token_events_org_idx on token_events (org_id, id);
-- Exactly once per token, whichever replica notices first: first use and expiry are
-- inserted with ON CONFLICT DO NOTHING against this index.
create unique index token_events_once_idx on token_events (token_id, kind)
    where kind in ('created', 'first_used', 'expired');
-- Where the expiry sweep resumes: the latest expiry already recorded.
create index token_events_expired_at_idx on token_events (at) where kind = 'expired';

-- Append-only, also against a stray UPDATE or DELETE by hand. TRUNCATE is refused too.
create function token_events_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'token_events is append-only: % refused', tg_op;
end
$$;

create trigger token_events_append_only
    before update or delete on token_events
    for each row execute function token_events_append_only();

create trigger token_events_no_truncate
    before truncate on token_events
    for each statement execute function token_events_append_only();

-- ListExpiringTokens and the expiry sweep: active tokens by expiry, soonest first.
create index api_tokens_expiring_idx on api_tokens (expires_at, id)
    where revoked_at is null and expires_at is not null;
create index api_tokens_expiring_org_idx on api_tokens (org_id, expires_at, id)
    where revoked_at is null and expires_at is not null;

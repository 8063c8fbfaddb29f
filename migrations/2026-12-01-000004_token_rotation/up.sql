-- Rotation, offboarding and leaked-token reports (issue 12).
--
-- A rotation ends the old token's life at a time the store holds, not a timer in a process:
-- its revoked_at is set, in the same transaction as the new token's insert, to the end of
-- the overlap (possibly in the future). A token is revoked from revoked_at on: every
-- reader (API status, replica caches) compares it with the clock, so the old token stops
-- working at that instant on every replica whether or not the replica that rotated it is
-- still alive.
alter table api_tokens
    add column replaced_by uuid references api_tokens (id),
    add column revocation_reason text,
    add constraint api_tokens_revocation_reason check (
        revocation_reason in ('revoked', 'rotated', 'exposed', 'offboarded')
    ),
    add constraint api_tokens_reason_with_revocation check (
        revocation_reason is null or revoked_at is not null
    );

-- Rows revoked before this migration were revoked through RevokeToken or the CLI.
update api_tokens set revocation_reason = 'revoked' where revoked_at is not null;

comment on column api_tokens.revoked_at is 'Revocation time; the token stops working at this instant (in the future during a rotation overlap). Once reached it never changes; a future one may only move earlier';
comment on column api_tokens.replaced_by is 'The token that replaced this one in a rotation (set when the rotation is made)';
comment on column api_tokens.revocation_reason is 'Why revoked_at is set: revoked, rotated, exposed or offboarded';

-- Revocation stays irreversible. The one change allowed to a set revoked_at: a time still
-- in the future (a rotation overlap) may move earlier, e.g. when the old token is revoked
-- or reported as exposed during the overlap. It can never move later or be cleared, and a
-- reached revocation never changes. A revocation made by hand in SQL gets the reason
-- `revoked`.
create or replace function api_tokens_keep_revocation() returns trigger language plpgsql as $$
begin
    if new.revoked_at is not null and new.revocation_reason is null then
        new.revocation_reason := 'revoked';
    end if;
    if old.revoked_at is not null and new.revoked_at is distinct from old.revoked_at then
        if new.revoked_at is null
            or old.revoked_at <= now()
            or new.revoked_at > old.revoked_at then
            raise exception 'revocation of token % is irreversible', old.id;
        end if;
    end if;
    return new;
end
$$;

-- Idempotent rotation: a retry with the same request id by the same caller finds the token
-- its first attempt made, never a second one.
create table token_rotations (
    requested_by  text        not null,
    request_id    text        not null,
    old_token_id  uuid        not null references api_tokens (id),
    new_token_id  uuid        not null references api_tokens (id),
    created_at    timestamptz not null,
    primary key (requested_by, request_id),
    constraint token_rotations_request_id_length check (char_length(request_id) between 1 and 128)
);

comment on table token_rotations is 'Rotations made with a request id, so a retry returns the same new token';
comment on column token_rotations.requested_by is 'The caller: token:<id> of the calling token, or cli';
comment on column token_rotations.request_id is 'The caller''s idempotency key (1-128 characters)';
comment on column token_rotations.old_token_id is 'The rotated token';
comment on column token_rotations.new_token_id is 'The token the rotation created';
comment on column token_rotations.created_at is 'When the rotation was made';

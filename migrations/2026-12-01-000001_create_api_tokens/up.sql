-- API tokens. The secret is never stored: only an argon2id hash of its secret part.
create table api_tokens (
    id           uuid        primary key,
    lookup_id    text        not null,
    secret_hash  text        not null,
    name         text        not null,
    description  text        not null default '',
    scopes       text[]      not null,
    org_id       text        not null,
    user_id      text        not null,
    created_at   timestamptz not null,
    created_by   text        not null,
    expires_at   timestamptz,
    last_used_at timestamptz,
    revoked_at   timestamptz,
    constraint api_tokens_lookup_id_shape check (lookup_id ~ '^[0-9A-Za-z]{12}$'),
    constraint api_tokens_name_length check (char_length(name) between 1 and 100),
    constraint api_tokens_description_length check (char_length(description) <= 1000),
    constraint api_tokens_scopes_present check (cardinality(scopes) between 1 and 64)
);

comment on table api_tokens is 'API tokens of casola-auth; one row per token, secrets never stored';
comment on column api_tokens.id is 'Token id (UUID v4), the public handle of the API';
comment on column api_tokens.lookup_id is 'The 12 base62 characters after csl_ in the token: finds the row, not secret';
comment on column api_tokens.secret_hash is 'argon2id PHC string of the 32-character secret part (parameters inside, so they can change)';
comment on column api_tokens.name is 'Label shown in the dashboard, 1-100 characters';
comment on column api_tokens.description is 'Optional notes, up to 1000 characters';
comment on column api_tokens.scopes is 'Granted scopes as named in the catalog, not expanded';
comment on column api_tokens.org_id is 'Owning organisation (opaque id from the user service)';
comment on column api_tokens.user_id is 'Owning user (opaque id from the user service)';
comment on column api_tokens.created_at is 'Creation time';
comment on column api_tokens.created_by is 'token:<id> of the minting token, or cli';
comment on column api_tokens.expires_at is 'The token stops working at this instant; null means never';
comment on column api_tokens.last_used_at is 'Last successful authentication, written behind in batches (seconds late)';
comment on column api_tokens.revoked_at is 'Revocation time; once set it never changes (revocation is irreversible)';

create unique index api_tokens_lookup_id_key on api_tokens (lookup_id);
create index api_tokens_owner_listing_idx on api_tokens (org_id, user_id, created_at desc, id desc);
create index api_tokens_org_listing_idx on api_tokens (org_id, created_at desc, id desc);

-- Revocation is irreversible, also against a stray UPDATE.
create function api_tokens_keep_revocation() returns trigger language plpgsql as $$
begin
    if old.revoked_at is not null and new.revoked_at is distinct from old.revoked_at then
        raise exception 'revocation of token % is irreversible', old.id;
    end if;
    return new;
end
$$;

create trigger api_tokens_keep_revocation
    before update of revoked_at on api_tokens
    for each row execute function api_tokens_keep_revocation();

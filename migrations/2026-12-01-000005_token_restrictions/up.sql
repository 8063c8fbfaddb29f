-- Restrictions a token carries (issue 13): where it may be used from and which models it may
-- name. Empty arrays mean unrestricted, so existing tokens keep working as before.
alter table api_tokens
    add column allowed_networks text[] not null default '{}',
    add column allowed_models   text[] not null default '{}',
    add constraint api_tokens_allowed_networks_count check (cardinality(allowed_networks) <= 32),
    add constraint api_tokens_allowed_models_count check (cardinality(allowed_models) <= 32);

comment on column api_tokens.allowed_networks is 'CIDR blocks (canonical text, IPv4 or IPv6) the token may be used from; empty: any network';
comment on column api_tokens.allowed_models is 'Model names or trailing-wildcard patterns (llama-4-*) the token may name; empty: any model';

-- Restrictions are part of what a replica caches: a change made by hand in SQL is logged like
-- any other (a trigger of its own, so the change-log function of token_changes stays as it is).
create function api_tokens_log_restriction_change() returns trigger language plpgsql as $$
begin
    if new.allowed_networks is distinct from old.allowed_networks
        or new.allowed_models is distinct from old.allowed_models then
        -- The same lock as api_tokens_log_change: positions commit in order.
        perform pg_advisory_xact_lock(7161960557425491045);
        insert into token_changes (token_id, lookup_id, kind)
            values (old.id, old.lookup_id, 'update');
    end if;
    return null;
end
$$;

create trigger api_tokens_log_restriction_change
    after update of allowed_networks, allowed_models on api_tokens
    for each row execute function api_tokens_log_restriction_change();

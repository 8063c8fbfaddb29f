drop table token_rotations;
create or replace function api_tokens_keep_revocation() returns trigger language plpgsql as $$
begin
    if old.revoked_at is not null and new.revoked_at is distinct from old.revoked_at then
        raise exception 'revocation of token % is irreversible', old.id;
    end if;
    return new;
end
$$;
alter table api_tokens
    drop constraint api_tokens_reason_with_revocation,
    drop constraint api_tokens_revocation_reason,
    drop column revocation_reason,
    drop column replaced_by;

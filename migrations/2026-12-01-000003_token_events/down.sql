drop index api_tokens_expiring_org_idx;
drop index api_tokens_expiring_idx;
drop trigger token_events_no_truncate on token_events;
drop trigger token_events_append_only on token_events;
drop function token_events_append_only();
drop table token_events;

drop trigger api_tokens_log_change on api_tokens;
drop function api_tokens_log_change();
drop table token_changes;

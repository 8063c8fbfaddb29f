drop trigger api_tokens_keep_revocation on api_tokens;
drop function api_tokens_keep_revocation();
drop table api_tokens;

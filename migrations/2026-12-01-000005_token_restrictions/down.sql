drop trigger api_tokens_log_restriction_change on api_tokens;
drop function api_tokens_log_restriction_change();
alter table api_tokens drop column allowed_networks, drop column allowed_models;

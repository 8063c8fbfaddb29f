// @generated automatically by Diesel CLI.

diesel::table! {
    api_tokens (id) {
        id -> Uuid,
        lookup_id -> Text,
        secret_hash -> Text,
        name -> Text,
        description -> Text,
        scopes -> Array<Text>,
        org_id -> Text,
        user_id -> Text,
        created_at -> Timestamptz,
        created_by -> Text,
        expires_at -> Nullable<Timestamptz>,
        last_used_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
        replaced_by -> Nullable<Uuid>,
        revocation_reason -> Nullable<Text>,
        allowed_networks -> Array<Text>,
        allowed_models -> Array<Text>,
    }
}

diesel::table! {
    token_rotations (requested_by, request_id) {
        requested_by -> Text,
        request_id -> Text,
        old_token_id -> Uuid,
        new_token_id -> Uuid,
        created_at -> Timestamptz,
    }
}

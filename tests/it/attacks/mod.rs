//! Our own attack suite: each file here attacks one surface the way an outside suite would.
//! Attacks that need a feature's own fixtures (the fake sign-in provider, the document
//! server) live beside that feature and are listed here, so this file is the map of what is
//! attacked and where.
//!
//! | surface | attacks | where |
//! |---|---|---|
//! | TLS listener | SNI for another host, ALPN we do not speak, HTTP/2 rapid reset, CONTINUATION flood, oversized header list | `attacks::tls`; an ACME `--tls-host` apart from the external host still validates and is served, a third name is not: `acme::a_certificate_for_the_tls_host_named_apart_from_the_external_url` |
//! | provider sign-ins | state replay and another browser | `providers::a_callback_must_come_back_to_the_browser_that_started_once` |
//! | | mix-up: another issuer in the answer, none when promised, another provider's callback | `providers::a_sign_in_answer_from_another_provider_is_refused` |
//! | | ID token: signature, audience, issuer, expiry, nonce, another party, replayed | `providers::oidc_sign_in_checks_the_id_token_and_the_allow_lists` |
//! | | a user taken off an allow-list, or out of an org | `providers::a_user_taken_off_the_list_…`, `providers::a_membership_that_ends_…` |
//! | client metadata documents | loopback and private addresses, redirects, huge, wrong `client_id`, 404 | `cimd::loopback_documents_…`, `cimd::documents_that_do_not_describe_…` |
//! | | slow (never answers, trickles) | `cimd::slow_document_hosts_are_given_up_on` |
//! | | changed after it was cached | `cimd::a_changed_document_is_used_as_it_is_now` |
//! | | a flood of documents at one host | `cimd::anonymous_authorize_requests_cannot_make_the_proxy_flood_a_host` |
//! | users against each other | shared-mode cancel and forged answers, `Last-Event-ID` across users, one user and `--max-sessions` | `attacks::sessions` |
//! | | sessions and upstream sessions are their owner's | `stdio::sessions_are_checked_owned_and_limited`, `proxy::upstream_sessions_belong_to_their_user` |
//! | `--trusted-proxies` | forged forwarding headers through a real nginx | `attacks::behind_nginx` |
//! | | forged headers straight at us; a trusted proxy's `X-Forwarded-Host` given twice or as a list | `gate::x_forwarded_host_is_believed_only_from_trusted_proxies`, `proxy::trusted_proxy_chain_is_extended` |
//! | said twice | single-valued request headers repeated (lane and general stack alike) | `fastlane::requests_the_lane_does_not_serve_get_the_general_answers` |
//! | | an upstream answer repeating `Mcp-Session-Id`, `Location` or `Content-Type` | `fastlane::the_lane_answers_exactly_as_the_general_stack` |
//! | | a member name twice in a registration or a metadata document; an OAuth parameter twice | `oauth::registration_accepts_real_clients_and_refuses_bad_metadata`, `cimd::documents_that_do_not_describe_…`, `web::form` (unit) |
//! | secrets | read by the stdio child through `/proc`; given as flags, read by any local user in `/proc/<pid>/cmdline` | `secrets::the_stdio_child_cannot_read_…`, `secrets::secrets_given_as_flags_are_masked_in_proc_cmdline` |
//! | identity assertion | another audience, expired, a key no longer published, used as an access token | `providers::an_identity_assertion_is_good_for_one_audience_…` |
//! | metrics listener | what it serves, series an attacker could add, secrets in it | `attacks::metrics` |
//! | enumeration | the password form, registrations, revocation | `attacks::enumeration` |
//! | DPoP | replay, another key, wrong method or URL, old proofs, nonces, across replicas | `dpop`, `replicas::a_dpop_proof_used_at_one_replica_…` |
//! | bounds | heads, bodies, slow clients, registrations, anonymous `/authorize` floods | `bounds`, `fastlane`, `production::slow_headers_…` |

mod behind_nginx;
mod enumeration;
mod metrics;
mod sessions;
mod tls;

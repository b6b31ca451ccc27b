//! The dashboard: one page (`/`) and its assets (`/dashboard/...`), compiled into the binary so
//! it works on a machine with no network (no CDN, no framework).
//!
//! It owns only these static files. Everything the page shows it reads, like any other client,
//! from the admin API it polls (`/api/v1/regions`, `/api/v1/events`, `/api/v1/route`), and the
//! switches change flags through `PUT /api/v1/regions/{name}` with the operator's token. So the
//! files carry no data and are served without a token from anywhere; the API keeps its rules.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// One embedded file: where it is served, its media type and its bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../assets/dashboard/index.html"),
    },
    Asset {
        path: "/dashboard/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/dashboard/app.js"),
    },
    Asset {
        path: "/dashboard/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/dashboard/style.css"),
    },
    Asset {
        path: "/dashboard/world.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../assets/dashboard/world.svg"),
    },
];

/// Scripts and styles from this origin only (no inline script, so an injected string cannot
/// run and read the token the page keeps in `sessionStorage`), no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Whether `path` is one of the dashboard's files (they need no token to read).
pub fn is_asset(path: &str) -> bool {
    ASSETS.iter().any(|a| a.path == path)
}

/// The routes serving the page and its assets.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        router.route(asset.path, get(move || async move { serve(asset) }))
    })
}

fn serve(asset: &'static Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            // Revalidate on each load, so a new binary's page is seen after an upgrade.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        asset.body,
    )
        .into_response()
}

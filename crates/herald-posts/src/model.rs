//! What the API shows and takes.

use chrono::{DateTime, Utc};
use herald_core::platforms::Violation;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PostState {
    Draft,
    Scheduled,
    Publishing,
    Published,
    PartiallyPublished,
    Failed,
    Cancelled,
}

impl PostState {
    pub fn as_str(self) -> &'static str {
        match self {
            PostState::Draft => "draft",
            PostState::Scheduled => "scheduled",
            PostState::Publishing => "publishing",
            PostState::Published => "published",
            PostState::PartiallyPublished => "partially_published",
            PostState::Failed => "failed",
            PostState::Cancelled => "cancelled",
        }
    }

    /// A new (or newly published) post's state: a draft, due later, or due now.
    pub fn initial(draft: bool, schedule: Option<chrono::DateTime<chrono::Utc>>) -> PostState {
        match (draft, schedule) {
            (true, _) => PostState::Draft,
            (false, Some(t)) if t > chrono::Utc::now() => PostState::Scheduled,
            _ => PostState::Publishing,
        }
    }

    /// The state a new post's deliveries start in.
    pub fn delivery_state(self) -> DeliveryState {
        match self {
            PostState::Scheduled => DeliveryState::Scheduled,
            _ => DeliveryState::Pending,
        }
    }

    pub fn parse(s: &str) -> Option<PostState> {
        use PostState::*;
        [Draft, Scheduled, Publishing, Published, PartiallyPublished, Failed, Cancelled]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Scheduled,
    Publishing,
    Published,
    Failed,
    Unconfirmed,
    Cancelled,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Scheduled => "scheduled",
            DeliveryState::Publishing => "publishing",
            DeliveryState::Published => "published",
            DeliveryState::Failed => "failed",
            DeliveryState::Unconfirmed => "unconfirmed",
            DeliveryState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> DeliveryState {
        use DeliveryState::*;
        [Pending, Scheduled, Publishing, Published, Failed, Unconfirmed, Cancelled]
            .into_iter()
            .find(|d| d.as_str() == s)
            .unwrap_or(Failed)
    }

    /// Nothing more happens without a person.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeliveryState::Published | DeliveryState::Failed | DeliveryState::Unconfirmed | DeliveryState::Cancelled
        )
    }
}

/// Splitting long text into a thread where the platform takes replies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Thread {
    /// Split text over the platform's limit into replies instead of refusing it.
    #[serde(default)]
    pub split: bool,
    /// End each part with ` (i/n)`.
    #[serde(default)]
    pub numbering: bool,
}

/// The content of a post, or of one target's override.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Content {
    pub text: String,
    pub link: Option<String>,
    /// Per-platform options: `visibility`, `title`, `silent`, `langs`, `subject`, …
    #[schema(value_type = Object)]
    #[serde(default = "empty")]
    pub options: serde_json::Value,
    #[serde(default)]
    pub thread: Thread,
    /// Media library ids, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media: Vec<Uuid>,
}

pub(crate) fn empty() -> serde_json::Value {
    serde_json::json!({})
}

/// One target of a new post.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetInput {
    pub connection_id: Uuid,
    /// This target's text instead of the post's.
    pub text: Option<String>,
    /// Merged over the post's options for this target.
    #[schema(value_type = Option<Object>)]
    pub options: Option<serde_json::Value>,
}

/// `POST /api/v1/posts`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPost {
    pub text: String,
    pub link: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub options: Option<serde_json::Value>,
    #[serde(default)]
    pub thread: Thread,
    /// Media library ids (`POST /api/v1/media`), in order.
    #[serde(default)]
    pub media: Vec<Uuid>,
    pub targets: Vec<TargetInput>,
    /// When to publish: an instant (`2026-03-29T07:00:00Z`), or a wall-clock time in `timezone`
    /// (`2026-03-29T09:00`). Absent: now.
    pub schedule_at: Option<String>,
    /// The IANA zone of a wall-clock `schedule_at`; the team's timezone when absent.
    pub timezone: Option<String>,
    /// Save without publishing.
    #[serde(default)]
    pub draft: bool,
    pub campaign: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Publish again every N days (1 to 365), at the same local time, until cancelled.
    #[serde(default)]
    pub repeat_every_days: Option<i64>,
}

impl NewPost {
    /// Plain text to these connections, now: the rest at its defaults, to set with `..`.
    pub fn now(text: impl Into<String>, targets: &[Uuid]) -> NewPost {
        NewPost {
            text: text.into(),
            link: None,
            options: None,
            thread: Thread::default(),
            media: vec![],
            targets: targets.iter().map(|c| TargetInput { connection_id: *c, text: None, options: None }).collect(),
            schedule_at: None,
            timezone: None,
            draft: false,
            campaign: None,
            tags: vec![],
            repeat_every_days: None,
        }
    }
}

/// `PATCH /api/v1/posts/{id}`: only while nothing has been published or is publishing.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostUpdate {
    pub text: Option<String>,
    pub link: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub options: Option<serde_json::Value>,
    pub thread: Option<Thread>,
    pub media: Option<Vec<Uuid>>,
    /// A new time; the jobs move with it.
    pub schedule_at: Option<String>,
    pub timezone: Option<String>,
    /// `false` publishes a draft (at `schedule_at`, or now).
    pub draft: Option<bool>,
    pub campaign: Option<String>,
    pub tags: Option<Vec<String>>,
    /// A new repeat interval in days; 0 stops the series after this post.
    pub repeat_every_days: Option<i64>,
}

/// One try at a platform.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AttemptView {
    /// The thread part (0 for the post itself).
    pub part: i64,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i64,
    /// `published`, or the error class: `auth`, `invalid`, `transient`, `rate_limited`,
    /// `unknown_outcome`.
    pub outcome: String,
    pub http_status: Option<i64>,
    pub code: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: Uuid,
    pub connection_id: Uuid,
    pub platform: String,
    pub state: DeliveryState,
    pub content: Content,
    pub run_at: Option<DateTime<Utc>>,
    pub platform_post_id: Option<String>,
    pub platform_url: Option<String>,
    /// Thread parts published so far.
    #[schema(value_type = Vec<Object>)]
    pub parts: serde_json::Value,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub last_error_class: Option<String>,
    pub published_at: Option<DateTime<Utc>>,
    pub attempt_log: Vec<AttemptView>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PostView {
    pub id: Uuid,
    pub state: PostState,
    pub content: Content,
    pub schedule_at: Option<DateTime<Utc>>,
    pub timezone: Option<String>,
    pub campaign: Option<String>,
    pub tags: Vec<String>,
    /// Repeats every this many days.
    pub repeat_every_days: Option<i64>,
    /// The first post of the series this one repeats.
    pub series_id: Option<Uuid>,
    pub author_user: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deliveries: Vec<DeliveryView>,
}

/// The rules one target breaks.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TargetViolations {
    pub index: usize,
    pub connection_id: Uuid,
    pub platform: String,
    #[schema(value_type = Vec<Object>)]
    pub violations: Vec<Violation>,
}

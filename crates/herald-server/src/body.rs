//! A JSON body extractor whose rejections use Herald's error format: a wrong content type is 415,
//! malformed JSON or an unknown field (such as `team_id` where it is not meant to be set) is 400.

use crate::error::ApiError;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use herald_core::ErrorCode;

pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "this endpoint takes a JSON body; send Content-Type: application/json",
            )),
            Err(e @ JsonRejection::JsonDataError(_)) => Err(ApiError::new(ErrorCode::BadRequest, e.body_text())),
            Err(e) => {
                Err(ApiError::new(ErrorCode::BadRequest, format!("the body is not valid JSON: {}", e.body_text())))
            }
        }
    }
}

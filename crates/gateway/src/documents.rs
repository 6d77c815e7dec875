//! The gateway's client of the document store, which lives in the embeddings service: the
//! generated stubs on the embeddings backend's channel, behind a small domain API. Every call
//! names the caller's namespace (its tenant), so one principal never reaches another's documents.

use std::future::Future;
use std::time::Duration;

use passerelle_proto::embeddings::embeddings_client::EmbeddingsClient;
use passerelle_proto::embeddings::{
    DeleteDocumentRequest, DeleteDocumentResponse, Document, GetDocumentRequest,
    IngestDocumentRequest, IngestDocumentResponse, ListDocumentsRequest, RetrieveRequest,
    RetrieveResponse,
};
use tonic::{Code, Status};

use crate::backend::{BackendError, TracedChannel};
use crate::embeddings::EmbeddingsBackend;

/// A cheap handle on the document RPCs.
#[derive(Clone)]
pub(crate) struct DocumentsBackend {
    client: EmbeddingsClient<TracedChannel>,
    request_timeout: Duration,
    control_timeout: Duration,
}

impl DocumentsBackend {
    pub(crate) fn new(embeddings: &EmbeddingsBackend) -> Self {
        let (request_timeout, control_timeout) = embeddings.timeouts();
        Self {
            client: embeddings.client(),
            request_timeout,
            control_timeout,
        }
    }

    /// Chunks, embeds and stores a document: as long as an embedding request.
    pub(crate) async fn ingest(
        &self,
        request: IngestDocumentRequest,
    ) -> Result<IngestDocumentResponse, BackendError> {
        let mut client = self.client.clone();
        let timeout = self.request_timeout;
        Ok(call(timeout, client.ingest_document(timed(request, timeout))).await?)
    }

    pub(crate) async fn list(&self, namespace: String) -> Result<Vec<Document>, BackendError> {
        let mut client = self.client.clone();
        let timeout = self.control_timeout;
        let request = timed(ListDocumentsRequest { namespace }, timeout);
        Ok(call(timeout, client.list_documents(request))
            .await?
            .documents)
    }

    /// The document, or `None` when the namespace has none by that id.
    pub(crate) async fn get(
        &self,
        namespace: String,
        document_id: String,
    ) -> Result<Option<Document>, BackendError> {
        let mut client = self.client.clone();
        let timeout = self.control_timeout;
        let request = timed(
            GetDocumentRequest {
                namespace,
                document_id,
            },
            timeout,
        );
        found(call(timeout, client.get_document(request)).await)
    }

    /// What was deleted, or `None` when the namespace has no document by that id.
    pub(crate) async fn delete(
        &self,
        namespace: String,
        document_id: String,
    ) -> Result<Option<DeleteDocumentResponse>, BackendError> {
        let mut client = self.client.clone();
        let timeout = self.control_timeout;
        let request = timed(
            DeleteDocumentRequest {
                namespace,
                document_id,
            },
            timeout,
        );
        found(call(timeout, client.delete_document(request)).await)
    }

    /// The namespace's chunks closest to a query, best first.
    pub(crate) async fn retrieve(
        &self,
        request: RetrieveRequest,
    ) -> Result<RetrieveResponse, BackendError> {
        let mut client = self.client.clone();
        let timeout = self.request_timeout;
        Ok(call(timeout, client.retrieve(timed(request, timeout))).await?)
    }
}

fn timed<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Awaits a call for at most `timeout`: the deadline holds even when the service never answers.
async fn call<T>(
    timeout: Duration,
    response: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(timeout, response).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded("the request timed out")),
    }
}

/// NOT_FOUND from a call naming a document means that document, not a model.
fn found<T>(result: Result<T, Status>) -> Result<Option<T>, BackendError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(status) => Err(status.into()),
    }
}

/// Renames the field a service error names to the field of the HTTP request it came from
/// (`chunk_tokens` is `chunking.max_tokens` on the wire), prefixed for nested requests.
pub(crate) fn rename_param(err: BackendError, rename: impl Fn(&str) -> String) -> BackendError {
    match err {
        BackendError::InvalidArgument {
            message,
            param: Some(param),
        } => BackendError::InvalidArgument {
            message,
            param: Some(rename(&param)),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_is_none_and_other_failures_stay_errors() {
        assert_eq!(found::<u8>(Ok(1)).unwrap(), Some(1));
        assert_eq!(found::<u8>(Err(Status::not_found("no"))).unwrap(), None);
        assert!(matches!(
            found::<u8>(Err(Status::unavailable("down"))),
            Err(BackendError::Unavailable { .. })
        ));
    }

    #[test]
    fn params_are_renamed_for_the_client() {
        let err = BackendError::InvalidArgument {
            message: "m".into(),
            param: Some("top_k".into()),
        };
        match rename_param(err, |p| format!("retrieval.{p}")) {
            BackendError::InvalidArgument { param, .. } => {
                assert_eq!(param.as_deref(), Some("retrieval.top_k"))
            }
            other => panic!("{other:?}"),
        }
    }
}

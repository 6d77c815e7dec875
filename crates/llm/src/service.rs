//! The `passerelle.llm.v1.Llm` gRPC service over an [`EngineHandle`].

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use passerelle_proto::{common, llm};
use tonic::{Request, Response, Status};

use crate::{
    convert,
    engine::{EngineHandle, EngineState},
};

/// Generation, model listing and tokenization for one model.
#[derive(Debug, Clone)]
pub struct LlmService {
    engine: EngineHandle,
    source: String,
}

impl LlmService {
    /// `source` is what the operator named the model by, shown in `ListModels`.
    pub fn new(engine: EngineHandle, source: impl Into<String>) -> Self {
        Self {
            engine,
            source: source.into(),
        }
    }

    fn model_info(&self) -> common::ModelInfo {
        let mut info = common::ModelInfo {
            id: self.engine.model_id().to_owned(),
            family: "qwen2".to_owned(),
            format: self.engine.format().as_str().to_owned(),
            owned_by: "passerelle".to_owned(),
            source: self.source.clone(),
            ..Default::default()
        };
        let state = match self.engine.state() {
            EngineState::Loading => common::ModelState::Loading,
            EngineState::Ready(served) => {
                info.context_length = u32::try_from(served.context_length).unwrap_or(u32::MAX);
                info.created_unix = served.created_unix;
                common::ModelState::Ready
            }
            EngineState::Failed(message) => {
                info.error = message.to_string();
                common::ModelState::Failed
            }
        };
        info.state = state as i32;
        info
    }
}

type GenerateStream = Pin<Box<dyn Stream<Item = Result<llm::GenerateResponse, Status>> + Send>>;

#[tonic::async_trait]
impl llm::llm_server::Llm for LlmService {
    type GenerateStream = GenerateStream;

    async fn generate(
        &self,
        request: Request<llm::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let request = convert::generate_request(request.into_inner())?;
        let model = request.model.clone();
        let events = self.engine.generate(request)?;
        let stream = events.map(move |event| match event {
            Ok(event) => Ok(convert::event(event, &model)),
            Err(err) => Err(Status::from(err)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_models(
        &self,
        _request: Request<common::ListModelsRequest>,
    ) -> Result<Response<common::ListModelsResponse>, Status> {
        Ok(Response::new(common::ListModelsResponse {
            models: vec![self.model_info()],
        }))
    }

    async fn tokenize(
        &self,
        request: Request<llm::TokenizeRequest>,
    ) -> Result<Response<llm::TokenizeResponse>, Status> {
        let request = request.into_inner();
        let prompt = convert::prompt(request.prompt)?;
        let rendered = self.engine.tokenize(&request.model, &prompt)?;
        Ok(Response::new(llm::TokenizeResponse {
            ids: rendered.ids,
            text: rendered.text,
        }))
    }
}

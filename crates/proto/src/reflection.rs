//! gRPC server reflection from a descriptor set: the index that answers file, symbol and
//! extension lookups (the gateway answers for itself and merges parts; simulated parts answer
//! from it directly), and the conversion between the two wire-identical protocol versions.

use std::collections::HashMap;

use prost::Message;
use tonic::Status;

use crate::grpc::reflection::{v1, v1alpha};
use v1::server_reflection_request::MessageRequest;
use v1::server_reflection_response::MessageResponse;

/// `google.rpc.Code.NOT_FOUND`.
pub const NOT_FOUND: i32 = 5;
/// `google.rpc.Code.INVALID_ARGUMENT`.
pub const INVALID_ARGUMENT: i32 = 3;

/// The names of both reflection services.
pub const SERVICE_NAMES: [&str; 2] = [
    v1alpha::server_reflection_server::SERVICE_NAME,
    v1::server_reflection_server::SERVICE_NAME,
];

/// Re-encodes a message as its twin of the other reflection version (they are wire-identical).
pub fn convert<A: Message, B: Message + Default>(msg: &A) -> Result<B, Status> {
    B::decode(msg.encode_to_vec().as_slice())
        .map_err(|_| Status::internal("reflection message does not convert between versions"))
}

/// A reflection error answer.
pub fn error_response(code: i32, message: String) -> MessageResponse {
    MessageResponse::ErrorResponse(v1::ErrorResponse {
        error_code: code,
        error_message: message,
    })
}

// === answering from descriptors ===

/// `google.protobuf.FileDescriptorSet`, with each file kept as the exact bytes it was encoded
/// as (re-encoding through `prost_types` would drop unknown fields such as custom options).
#[derive(Clone, PartialEq, Message)]
struct RawFileSet {
    #[prost(bytes = "vec", repeated, tag = "1")]
    file: Vec<Vec<u8>>,
}

#[derive(Debug)]
struct IndexedFile {
    name: String,
    raw: Vec<u8>,
    dependencies: Vec<String>,
}

/// Reflection answers from an encoded `FileDescriptorSet`: files by name, by the symbols they
/// declare (messages, fields, enums and their values, services, methods, extensions) and by the
/// extensions they define. A file comes with its transitive dependencies, as grpc-go sends them.
#[derive(Debug, Default)]
pub struct DescriptorIndex {
    files: Vec<IndexedFile>,
    by_name: HashMap<String, usize>,
    by_symbol: HashMap<String, usize>,
    /// (extendee, number) -> file.
    extensions: HashMap<(String, i32), usize>,
}

impl DescriptorIndex {
    /// Indexes the files of an encoded `FileDescriptorSet` for which `keep(file)` holds.
    pub fn new(
        encoded_set: &[u8],
        mut keep: impl FnMut(&prost_types::FileDescriptorProto) -> bool,
    ) -> Result<Self, prost::DecodeError> {
        let set = RawFileSet::decode(encoded_set)?;
        let mut index = Self::default();
        for raw in set.file {
            let file = prost_types::FileDescriptorProto::decode(raw.as_slice())?;
            if !keep(&file) {
                continue;
            }
            let at = index.files.len();
            let package = file.package().to_owned();
            let mut symbols = Vec::new();
            let scope = |name: &str| {
                if package.is_empty() {
                    name.to_owned()
                } else {
                    format!("{package}.{name}")
                }
            };
            for message in &file.message_type {
                message_symbols(&scope(message.name()), message, &mut symbols);
            }
            for enumeration in &file.enum_type {
                enum_symbols(&package, enumeration, &mut symbols);
            }
            for service in &file.service {
                let name = scope(service.name());
                symbols.extend(
                    service
                        .method
                        .iter()
                        .map(|m| format!("{name}.{}", m.name())),
                );
                symbols.push(name);
            }
            let mut extensions = Vec::new();
            collect_extensions(&package, &file.extension, &mut symbols, &mut extensions);
            for message in &file.message_type {
                nested_extensions(
                    &scope(message.name()),
                    message,
                    &mut symbols,
                    &mut extensions,
                );
            }
            for symbol in symbols {
                index.by_symbol.entry(symbol).or_insert(at);
            }
            for extension in extensions {
                index.extensions.entry(extension).or_insert(at);
            }
            index.by_name.entry(file.name().to_owned()).or_insert(at);
            index.files.push(IndexedFile {
                name: file.name().to_owned(),
                raw,
                dependencies: file.dependency,
            });
        }
        Ok(index)
    }

    /// Answers one request; `services` is what `list_services` returns.
    pub fn answer(
        &self,
        req: &v1::ServerReflectionRequest,
        services: &[String],
    ) -> v1::ServerReflectionResponse {
        let not_found = |what: String| error_response(NOT_FOUND, format!("{what} not found"));
        let message_response = match &req.message_request {
            None => error_response(INVALID_ARGUMENT, "empty reflection request".into()),
            Some(MessageRequest::ListServices(_)) => {
                MessageResponse::ListServicesResponse(v1::ListServiceResponse {
                    service: services
                        .iter()
                        .map(|name| v1::ServiceResponse { name: name.clone() })
                        .collect(),
                })
            }
            Some(MessageRequest::FileByFilename(name)) => match self.by_name.get(name) {
                Some(&at) => self.file_response(at),
                None => not_found(format!("file {name:?}")),
            },
            Some(MessageRequest::FileContainingSymbol(symbol)) => {
                match self.by_symbol.get(symbol.trim_start_matches('.')) {
                    Some(&at) => self.file_response(at),
                    None => not_found(format!("symbol {symbol:?}")),
                }
            }
            Some(MessageRequest::FileContainingExtension(ext)) => {
                let key = (
                    ext.containing_type.trim_start_matches('.').to_owned(),
                    ext.extension_number,
                );
                match self.extensions.get(&key) {
                    Some(&at) => self.file_response(at),
                    None => not_found(format!(
                        "extension {} of {:?}",
                        ext.extension_number, ext.containing_type
                    )),
                }
            }
            Some(MessageRequest::AllExtensionNumbersOfType(ty)) => {
                let ty = ty.trim_start_matches('.');
                if self.by_symbol.contains_key(ty) {
                    let mut numbers: Vec<i32> = self
                        .extensions
                        .keys()
                        .filter(|(extendee, _)| extendee == ty)
                        .map(|(_, n)| *n)
                        .collect();
                    numbers.sort_unstable();
                    MessageResponse::AllExtensionNumbersResponse(v1::ExtensionNumberResponse {
                        base_type_name: ty.to_owned(),
                        extension_number: numbers,
                    })
                } else {
                    not_found(format!("type {ty:?}"))
                }
            }
        };
        v1::ServerReflectionResponse {
            valid_host: req.host.clone(),
            original_request: Some(req.clone()),
            message_response: Some(message_response),
        }
    }

    /// The file, then every file it depends on (transitively, each once).
    fn file_response(&self, at: usize) -> MessageResponse {
        let mut order = vec![at];
        let mut next = 0;
        while let Some(&current) = order.get(next) {
            next += 1;
            for dep in &self.files[current].dependencies {
                if let Some(&d) = self.by_name.get(dep)
                    && !order.contains(&d)
                {
                    order.push(d);
                }
            }
        }
        MessageResponse::FileDescriptorResponse(v1::FileDescriptorResponse {
            file_descriptor_proto: order.iter().map(|&i| self.files[i].raw.clone()).collect(),
        })
    }

    /// The names of the indexed files, in set order.
    pub fn file_names(&self) -> impl Iterator<Item = &str> {
        self.files.iter().map(|f| f.name.as_str())
    }
}

fn message_symbols(name: &str, message: &prost_types::DescriptorProto, out: &mut Vec<String>) {
    out.extend(message.field.iter().map(|f| format!("{name}.{}", f.name())));
    out.extend(
        message
            .oneof_decl
            .iter()
            .map(|o| format!("{name}.{}", o.name())),
    );
    for nested in &message.nested_type {
        message_symbols(&format!("{name}.{}", nested.name()), nested, out);
    }
    for enumeration in &message.enum_type {
        enum_symbols(name, enumeration, out);
    }
    out.push(name.to_owned());
}

/// An enum and its values (which live in the enum's enclosing scope, as in C++).
fn enum_symbols(
    scope: &str,
    enumeration: &prost_types::EnumDescriptorProto,
    out: &mut Vec<String>,
) {
    let qualify = |n: &str| {
        if scope.is_empty() {
            n.to_owned()
        } else {
            format!("{scope}.{n}")
        }
    };
    out.extend(enumeration.value.iter().map(|v| qualify(v.name())));
    out.push(qualify(enumeration.name()));
}

fn collect_extensions(
    scope: &str,
    fields: &[prost_types::FieldDescriptorProto],
    symbols: &mut Vec<String>,
    extensions: &mut Vec<(String, i32)>,
) {
    for field in fields {
        symbols.push(if scope.is_empty() {
            field.name().to_owned()
        } else {
            format!("{scope}.{}", field.name())
        });
        extensions.push((
            field.extendee().trim_start_matches('.').to_owned(),
            field.number(),
        ));
    }
}

fn nested_extensions(
    name: &str,
    message: &prost_types::DescriptorProto,
    symbols: &mut Vec<String>,
    extensions: &mut Vec<(String, i32)>,
) {
    collect_extensions(name, &message.extension, symbols, extensions);
    for nested in &message.nested_type {
        nested_extensions(
            &format!("{name}.{}", nested.name()),
            nested,
            symbols,
            extensions,
        );
    }
}

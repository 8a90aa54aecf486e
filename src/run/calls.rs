//! The calls `cairn run` sends, and the one task it builds, in the scheduler API's
//! messages: pure functions of the plan and the offer.

use anyhow::Context as _;
use cairn_api::Resources;
use cairn_api::v1::{
    Call, CommandInfo, ContainerInfo, DurationInfo, Environment, Filters, Offer, OfferId, TaskId,
    TaskInfo, TaskStatus, call, command_info, container_info, environment, offer,
};

use super::RunArgs;

pub(super) fn parse_env(pairs: &[String]) -> anyhow::Result<Vec<environment::Variable>> {
    pairs
        .iter()
        .map(|p| {
            let (name, value) = p
                .split_once('=')
                .with_context(|| format!("--env {p:?} is not KEY=VALUE"))?;
            Ok(environment::Variable {
                name: name.to_owned(),
                value: value.to_owned(),
            })
        })
        .collect()
}

pub(super) fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() { "task".into() } else { s }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn task_info(
    task_id: &str,
    name: &str,
    module: &std::path::Path,
    file_name: &str,
    args: &RunArgs,
    env: &[environment::Variable],
    wanted: &Resources,
    offer: &Offer,
) -> TaskInfo {
    let (command, container) = if args.native || args.docker_image.is_some() {
        let mut command = args.file.to_string_lossy().into_owned();
        for a in &args.args {
            command.push(' ');
            command.push_str(a);
        }
        let container = args.docker_image.as_ref().map(|image| ContainerInfo {
            r#type: container_info::Type::Docker as i32,
            // Docker's own network: the command reaches out, and binds no host port.
            docker: Some(container_info::DockerInfo {
                image: image.clone(),
                network: container_info::docker_info::Network::Bridge as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        let command = CommandInfo {
            shell: Some(true),
            value: Some(command),
            ..Default::default()
        };
        (command, container)
    } else {
        let mut argv = vec![file_name.to_owned()];
        argv.extend(args.args.iter().cloned());
        let command = CommandInfo {
            uris: vec![command_info::Uri {
                value: format!("file://{}", module.display()),
                ..Default::default()
            }],
            shell: Some(false),
            value: Some(file_name.to_owned()),
            arguments: argv,
            ..Default::default()
        };
        let container = ContainerInfo {
            r#type: container_info::Type::Wasm as i32,
            wasm: Some(container_info::WasmInfo { fuel: args.fuel }),
            ..Default::default()
        };
        (command, Some(container))
    };
    TaskInfo {
        name: name.to_owned(),
        task_id: Some(TaskId {
            value: task_id.to_owned(),
        }),
        agent_id: offer.agent_id.clone(),
        resources: wanted.to_proto(),
        command: Some(CommandInfo {
            environment: Some(Environment {
                variables: env.to_vec(),
            }),
            ..command
        }),
        container,
        max_completion_time: args.timeout.map(|t| DurationInfo {
            nanoseconds: t.as_nanos() as i64,
        }),
        ..Default::default()
    }
}

pub(super) fn accept(offer: &Offer, task: TaskInfo) -> Call {
    Call {
        r#type: call::Type::Accept as i32,
        accept: Some(call::Accept {
            offer_ids: offer.id.iter().cloned().collect(),
            operations: vec![offer::Operation {
                r#type: offer::operation::Type::Launch as i32,
                launch: Some(offer::operation::Launch {
                    task_infos: vec![task],
                }),
                launch_group: None,
            }],
            filters: None,
        }),
        ..Default::default()
    }
}

pub(super) fn decline_call(offer_ids: Vec<OfferId>) -> Call {
    Call {
        r#type: call::Type::Decline as i32,
        decline: Some(call::Decline {
            offer_ids,
            filters: Some(Filters {
                refuse_seconds: Some(60.0),
            }),
        }),
        ..Default::default()
    }
}

pub(super) fn acknowledge(status: &TaskStatus) -> Call {
    Call {
        r#type: call::Type::Acknowledge as i32,
        acknowledge: Some(call::Acknowledge {
            agent_id: status.agent_id.clone(),
            task_id: status.task_id.clone(),
            uuid: status.uuid.clone(),
        }),
        ..Default::default()
    }
}

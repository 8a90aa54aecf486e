//! A custom executor that runs several tasks at once, for trying the `cairn:executor`
//! world and for the host's tests (which rely on exactly this behaviour).
//!
//! `launch` reads the task's words: its `arguments` if it has any, else its `data` as
//! UTF-8 split on whitespace (a Mesos task names a command or an executor, not both,
//! so a framework passes a custom executor's input as TaskInfo.data):
//! - `sum A B …`: reports TASK_RUNNING, then TASK_FINISHED whose message is the
//!   decimal sum of the other arguments (TASK_FAILED naming the argument that is not
//!   an i64, or saying the sum overflows).
//! - `wait`: reports TASK_RUNNING and holds the task until a `finish` message, a kill
//!   or the shutdown.
//! - `stubborn`: like `wait`, but ignores kills, the shutdown's included (the host has
//!   to kill it after the grace period).
//! - `spin`: reports TASK_RUNNING, then loops forever inside `launch` (the host must
//!   interrupt it).
//! - anything else, or no arguments: `launch` returns an error.
//!
//! `message` understands `finish <task-id>` (a held task: TASK_FINISHED "finished by
//! message", and the framework message `finished <task-id>`) and `count` (the
//! framework message `waiting <n>`, n the number of held tasks, stubborn ones
//! included); anything else is logged. Every call is logged.

use std::collections::BTreeMap;

use cairn_sdk::{Executor, TaskInfo, TaskState, log, send_message, send_status};

/// How a held task reacts to kills.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Wait,
    Stubborn,
}

/// The executor's state: the tasks it holds, by id (ordered, so shutdown reports them
/// in a stable order).
#[derive(Default)]
struct Tasks {
    held: BTreeMap<String, Kind>,
}

impl Executor for Tasks {
    fn launch(&mut self, task: TaskInfo) -> Result<(), String> {
        log(&format!(
            "launch {} ({}) arguments {:?}, {} bytes of data",
            task.task_id,
            task.name,
            task.arguments,
            task.data.len()
        ));
        if self.held.contains_key(&task.task_id) {
            return Err(format!("task {} is already running", task.task_id));
        }
        let words: Vec<String> = if task.arguments.is_empty() {
            String::from_utf8_lossy(&task.data)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        } else {
            task.arguments.clone()
        };
        let (command, rest) = match words.split_first() {
            Some((command, rest)) => (command.as_str(), rest),
            None => return Err("unknown command: no arguments".into()),
        };
        match command {
            "sum" => {
                send_status(&task.task_id, TaskState::TaskRunning, "");
                match sum(rest) {
                    Ok(total) => {
                        send_status(&task.task_id, TaskState::TaskFinished, &total.to_string())
                    }
                    Err(e) => send_status(&task.task_id, TaskState::TaskFailed, &e),
                }
            }
            "wait" | "stubborn" => {
                send_status(&task.task_id, TaskState::TaskRunning, "");
                let kind = if command == "wait" {
                    Kind::Wait
                } else {
                    Kind::Stubborn
                };
                self.held.insert(task.task_id, kind);
            }
            "spin" => {
                send_status(&task.task_id, TaskState::TaskRunning, "");
                // A runaway executor: only the host's interruption ends this call.
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            other => return Err(format!("unknown command {other:?}")),
        }
        Ok(())
    }

    fn kill(&mut self, task_id: String) {
        log(&format!("kill {task_id}"));
        match self.held.get(&task_id) {
            Some(Kind::Wait) => {
                self.held.remove(&task_id);
                send_status(&task_id, TaskState::TaskKilled, "killed by the executor");
            }
            Some(Kind::Stubborn) => log(&format!("{task_id} is stubborn: kill ignored")),
            None => log(&format!("{task_id} is not held: kill ignored")),
        }
    }

    fn message(&mut self, data: Vec<u8>) {
        let text = String::from_utf8_lossy(&data);
        log(&format!("message {text:?}"));
        if let Some(task_id) = text.strip_prefix("finish ") {
            if self.held.remove(task_id).is_some() {
                send_status(task_id, TaskState::TaskFinished, "finished by message");
                send_message(format!("finished {task_id}").as_bytes());
            } else {
                log(&format!("{task_id} is not held: finish ignored"));
            }
        } else if text == "count" {
            send_message(format!("waiting {}", self.held.len()).as_bytes());
        } else {
            log(&format!("unknown message {text:?}"));
        }
    }

    fn shutdown(&mut self) {
        log(&format!("shutdown with {} tasks held", self.held.len()));
        self.held.retain(|task_id, kind| match kind {
            Kind::Wait => {
                send_status(task_id, TaskState::TaskKilled, "killed by the executor");
                false
            }
            Kind::Stubborn => {
                log(&format!("{task_id} is stubborn: shutdown ignored"));
                true
            }
        });
    }
}

/// The sum of `args` as i64s, or a message naming the first argument that is not one.
fn sum(args: &[String]) -> Result<i64, String> {
    args.iter().try_fold(0i64, |total, arg| {
        let n: i64 = arg
            .parse()
            .map_err(|e| format!("bad argument {arg:?}: {e}"))?;
        total
            .checked_add(n)
            .ok_or_else(|| format!("the sum overflows at argument {arg:?}"))
    })
}

cairn_sdk::export_executor!(Tasks);

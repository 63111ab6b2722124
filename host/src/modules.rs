//! The modules of a run, attached to the backbone's sites: creation from the registry,
//! attach plans, and dispatch at sites with errors that name the module and plugin.
use std::{cell::RefCell, collections::HashMap};

use abi_stable::std_types::{RStr, RVec};
use burn::tensor::backend::AutodiffBackend;
use peft_api::{ApiError, ApiVersion, AttachPlan, BackboneInfo, PeftModuleBox, SiteCall, SiteKind};
use peft_registry::Registry;
use serde_json::Value as Json;

use crate::{
    backbone::SiteModules,
    bridge::{HostGraph, SiteDispatch, Value},
    params::ParamStore,
};

pub struct ModuleInstance {
    /// Instance name: namespace of its parameters.
    pub name: String,
    pub plugin: String,
    pub plugin_version: String,
    pub api_version: ApiVersion,
    pub origin: String,
    pub plan: AttachPlan,
    obj: RefCell<PeftModuleBox>,
}

impl ModuleInstance {
    pub fn describe(&self) -> String {
        format!(
            "module `{}` (plugin {} {}, API {}, {})",
            self.name, self.plugin, self.plugin_version, self.api_version, self.origin
        )
    }

    /// A named extension call; `Ok(None)` when the plugin does not implement it.
    pub fn call<B: AutodiffBackend>(
        &self,
        graph: &HostGraph<'_, B>,
        name: &str,
        json: &str,
    ) -> Result<Option<String>, ApiError> {
        match self.raw_call(graph, name, json) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.is_unsupported() => Ok(None),
            Err(e) => Err(e.context(self.describe())),
        }
    }

    /// Why the plugin answered `name` with UNSUPPORTED, when it said more than the call's name
    /// (a plugin that knows the call but not for this configuration says why).
    pub fn unsupported_reason<B: AutodiffBackend>(
        &self,
        graph: &HostGraph<'_, B>,
        name: &str,
        json: &str,
    ) -> Option<String> {
        match self.raw_call(graph, name, json) {
            Err(e) if e.is_unsupported() && e.message.as_str() != name => {
                Some(e.message.to_string())
            }
            _ => None,
        }
    }

    fn raw_call<B: AutodiffBackend>(
        &self,
        graph: &HostGraph<'_, B>,
        name: &str,
        json: &str,
    ) -> Result<String, ApiError> {
        graph
            .with_namespace(&self.name, || {
                self.obj
                    .borrow_mut()
                    .call(graph.as_abi(), RStr::from(name), RStr::from(json))
                    .into_result()
            })
            .map(|s| s.into_string())
    }
}

/// What to create: plugin name, instance name, plugin config.
#[derive(Clone, Debug)]
pub struct ModuleRequest {
    pub plugin: String,
    pub name: String,
    pub config: Json,
}

#[derive(Default)]
pub struct Composition {
    pub modules: Vec<ModuleInstance>,
    /// Per site: whether it is a pair site (`[x, y] -> [y']`) and the (module, attachment) list.
    by_site: HashMap<String, (bool, Vec<(usize, u32)>)>,
}

impl Composition {
    /// Creates each module, lets it create its parameters and say where it attaches.
    pub fn attach<B: AutodiffBackend>(
        registry: &Registry,
        requests: &[ModuleRequest],
        info: &BackboneInfo,
        params: &RefCell<ParamStore<B>>,
    ) -> Result<Self, ApiError> {
        let info_json =
            serde_json::to_string(info).map_err(|e| ApiError::internal(e.to_string()))?;
        let mut comp = Composition::default();
        for req in requests {
            let entry = registry
                .get(&req.plugin)
                .map_err(|e| ApiError::config(e.to_string()))?;
            let mut obj = registry
                .create_module(&req.plugin, &req.config)
                .map_err(|e| ApiError::config(e.to_string()))?;
            let graph = HostGraph::new(params, false);
            let plan_json = graph
                .with_namespace(&req.name, || {
                    obj.attach(graph.as_abi(), RStr::from(info_json.as_str()))
                        .into_result()
                })
                .map_err(|e| {
                    e.context(format_args!(
                        "module `{}` (plugin {} {}) attaching",
                        req.name, req.plugin, entry.manifest.version
                    ))
                })?;
            let plan: AttachPlan = serde_json::from_str(&plan_json).map_err(|e| {
                ApiError::internal(format!(
                    "plugin {} returned an unreadable attach plan: {e}",
                    req.plugin
                ))
            })?;
            let idx = comp.modules.len();
            for (a, att) in plan.attachments.iter().enumerate() {
                let Some(site) = info.sites.iter().find(|s| s.name == att.site) else {
                    return Err(ApiError::config(format!(
                        "module `{}` (plugin {}) attaches at `{}`, which backbone `{}` does not have",
                        req.name, req.plugin, att.site, info.name
                    )));
                };
                let pair = matches!(site.kind, SiteKind::Sublayer | SiteKind::Projection);
                comp.by_site
                    .entry(att.site.clone())
                    .or_insert((pair, Vec::new()))
                    .1
                    .push((idx, a as u32));
            }
            comp.modules.push(ModuleInstance {
                name: req.name.clone(),
                plugin: req.plugin.clone(),
                plugin_version: entry.manifest.version.clone(),
                api_version: entry.api_version,
                origin: entry.origin.to_string(),
                plan,
                obj: RefCell::new(obj),
            });
        }
        Ok(comp)
    }

    /// Backbone weights that modules asked to train (AdapterBias's LayerNorms, ...).
    pub fn unfrozen_backbone_weights(&self) -> Vec<String> {
        self.modules
            .iter()
            .flat_map(|m| {
                m.plan
                    .attachments
                    .iter()
                    .flat_map(|a| a.unfreeze.iter().cloned())
            })
            .collect()
    }

    fn apply<B: AutodiffBackend>(
        &self,
        graph: &HostGraph<'_, B>,
        site: &str,
        mut inputs: Vec<Value<B>>,
    ) -> Result<Vec<Value<B>>, ApiError> {
        let Some((pair, list)) = self.by_site.get(site) else {
            return Ok(inputs);
        };
        if *pair && inputs.len() != 2 {
            return Err(ApiError::invalid(format!(
                "site `{site}` passes [x, y], got {} tensors",
                inputs.len()
            )));
        }
        let layer = site
            .split('.')
            .find_map(|p| p.parse::<u32>().ok())
            .unwrap_or(u32::MAX);
        for &(m, attachment) in list {
            let module = &self.modules[m];
            // Pair sites pass [x, y] and get [y'] back; the next module sees [x, y'].
            let x = if *pair { Some(inputs[0].clone()) } else { None };
            let handles: RVec<_> = inputs.into_iter().map(|v| graph.insert(v)).collect();
            let call = SiteCall {
                site: RStr::from(site),
                attachment,
                layer,
                training: graph.training,
            };
            let out = graph
                .with_namespace(&module.name, || {
                    module
                        .obj
                        .borrow()
                        .apply(graph.as_abi(), &call, handles)
                        .into_result()
                })
                .map_err(|e| e.context(format_args!("{} at site `{site}`", module.describe())))?;
            let mut values = out
                .into_iter()
                .map(|h| graph.take(h))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(x) = x {
                if values.len() != 1 {
                    return Err(ApiError::invalid(format!(
                        "{} at site `{site}` returned {} tensors, expected 1",
                        module.describe(),
                        values.len()
                    )));
                }
                values.insert(0, x);
            }
            inputs = values;
        }
        Ok(inputs)
    }
}

impl<B: AutodiffBackend> SiteModules<B> for Composition {
    fn is_attached(&self, site: &str) -> bool {
        self.by_site.contains_key(site)
    }

    fn call(
        &self,
        graph: &HostGraph<'_, B>,
        site: &str,
        inputs: Vec<Value<B>>,
    ) -> Result<Vec<Value<B>>, ApiError> {
        let pair = self.by_site.get(site).is_some_and(|(p, _)| *p);
        let mut out = self.apply(graph, site, inputs)?;
        if pair {
            out.remove(0);
        }
        Ok(out)
    }
}

impl<B: AutodiffBackend> SiteDispatch<B> for Composition {
    fn dispatch(
        &self,
        graph: &HostGraph<'_, B>,
        site: &str,
        inputs: Vec<Value<B>>,
    ) -> Result<Vec<Value<B>>, ApiError> {
        SiteModules::call(self, graph, site, inputs)
    }
}
